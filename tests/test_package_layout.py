"""The package a newcomer reads from folder names: no import cycle between lit_rlhf's modules (counting
imports inside functions too, the way a lazy import hides a circle), no loose top-level module, and the
public names importable from ``lit_rlhf`` itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lit_rlhf

PACKAGE = Path(lit_rlhf.__file__).parent


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module → the lit_rlhf modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                    base = base.rstrip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:  # `import lit_rlhf.x.y` of a name inside a module
                    t = t.rpartition(".")[0]
                if t and t != mod and t.startswith("lit_rlhf"):
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_find_cycle_finds_a_planted_circle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_sees_lazy_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "lit_rlhf"
    (pkg / "run").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "run" / "__init__.py").write_text("")
    (pkg / "run" / "a.py").write_text("from lit_rlhf.run import b\n")
    (pkg / "run" / "b.py").write_text("def f():\n    from lit_rlhf.run.a import x\n")
    graph = import_graph(pkg)
    assert graph["lit_rlhf.run.a"] == {"lit_rlhf.run.b"} and graph["lit_rlhf.run.b"] == {"lit_rlhf.run.a"}
    assert find_cycle(graph) is not None


def test_no_import_cycle_in_lit_rlhf() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_no_loose_top_level_module() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"top-level modules outside a folder: {loose}"


@pytest.mark.parametrize("name", lit_rlhf.__all__)
def test_public_name_imports_from_lit_rlhf(name: str) -> None:
    obj = getattr(lit_rlhf, name)
    assert obj.__name__ == name and obj.__doc__, f"{name} needs a docstring"
