"""Benchmark driver: lit_rlhf vs TRL on the same model, tokenizer, data and settings, on CPU.

    bash benchmarks/setup_peers.sh && .venv/bin/python benchmarks/run.py [--size toy|smollm2] [--repeats 3]

The lit_rlhf side runs with the interpreter that runs this script (or ``$LIT_PYTHON``), each peer with
its venv under ``benchmarks/.venvs/`` (``setup_peers.sh`` gives it this interpreter's torch and transformers).

1. ``prepare.py`` writes settings, tokenizer, model files and data (``benchmarks/runs/<size>/``);
2. the machine's fp32 matmul peak is measured (``torch.mm`` 4096², all ``threads`` cores);
3. for each task, lit_rlhf and the peer alternate ``--repeats`` times, each run in its own subprocess (peak
   RSS = that process's ``ru_maxrss``);
4. the work both report (optimizer steps, sequences, tokens) is checked equal to what the settings ask
   for, and the versions of torch and transformers equal, before any ratio is printed;
5. medians go to a markdown table, printed and written to ``benchmarks/results.md`` (toy) or
   ``benchmarks/results-<size>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    HERE,
    MODELS,
    PRECISIONS,
    SIZES,
    Settings,
    log,
    median,
    parse_result,
    runs_dir,
)
from group import GROUP_TASKS, lit_group_kwargs, trl_group_config  # noqa: E402
from work import (  # noqa: E402
    UnequalWork,
    check_versions,
    group_expected_work,
    ppo_expected_work,
    rm_expected_work,
    verify_work,
)

TASKS = ("rm", "ppo", *GROUP_TASKS)
PEER_VENV = {"rm": "trl116", "ppo": "trl112", "grpo": "trl116", "rloo": "trl116"}
PEER_SCRIPT = {"rm": "trl_side.py", "ppo": "trl_side.py", "grpo": "trl_group.py", "rloo": "trl_group.py"}
DESCRIPTION = {
    "toy": "GPT-2, 4 layers x 256 dims, the embedded world's word-level tokenizer and data",
    "smollm2": "Llama with SmolLM2-135M's shapes (30 layers x 576, 9 heads / 3 KV heads, tied 49,152-token "
    "vocabulary), a word-level tokenizer of that size, random-word prompts and responses",
}
PRECISION_TEXT = {
    "fp32": "fp32",
    "bf16": 'fp32 weights with bf16 autocast (lit_rlhf `Trainer(precision="bf16-mixed")`, TRL `bf16=True`)',
}
PEER_NAME = {
    "rm": "TRL 1.16.0 RewardTrainer",
    "ppo": "TRL 1.12.0 experimental PPOTrainer",
    "grpo": "TRL 1.16.0 GRPOTrainer",
    "rloo": "TRL 1.16.0 RLOOTrainer",
}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def lit_python(environ: dict[str, str] | None = None, executable: str | None = None) -> str:
    """The interpreter of the lit_rlhf side: ``$LIT_PYTHON`` if set, else the one running this script."""
    environ = os.environ if environ is None else environ
    return environ.get("LIT_PYTHON") or executable or sys.executable


def peer_python(task: str, here: Path = HERE) -> Path:
    """The peer venv's interpreter for ``task`` (made by ``setup_peers.sh``)."""
    return here / ".venvs" / PEER_VENV[task] / "bin" / "python"


def results_name(size: str, precision: str) -> str:
    """``results.md`` (toy, fp32), else ``results[-SIZE][-bf16].md``."""
    parts = [x for x, default in ((size, "toy"), (precision, "fp32")) if x != default]
    return "-".join(["results", *parts]) + ".md"


def expected_work(task: str, s: Settings) -> dict:
    """What the settings ask both sides to do, counted from the data ``prepare.py`` wrote."""
    data = runs_dir(s.size) / "data"
    if task == "rm":
        rows = [json.loads(line) for line in (data / "pairs_ids.jsonl").read_text().splitlines()]
        return rm_expected_work(s, rows)
    prompt_tokens = json.loads((data / "prompts_meta.json").read_text())["prompt_tokens"]
    if task == "ppo":
        return ppo_expected_work(s, prompt_tokens)
    return group_expected_work(s, task, prompt_tokens)


PEAK_SNIPPET = """
import time, torch
torch.set_num_threads({threads})
n = 4096
a, b = torch.randn(n, n, dtype=torch.{dtype}), torch.randn(n, n, dtype=torch.{dtype})
for _ in range(2): torch.mm(a, b)
best = 0.0
for _ in range(5):
    t = time.perf_counter(); torch.mm(a, b); dt = time.perf_counter() - t
    best = max(best, 2 * n**3 / dt)
print(best / 1e9)
"""


def busy_cores(seconds: float = 2.0) -> float:
    """Cores kept busy by the whole machine over ``seconds`` (from /proc/stat)."""

    def snap() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = f[3] + f[4]
        return sum(f) - idle, sum(f)

    b0, t0 = snap()
    time.sleep(seconds)
    b1, t1 = snap()
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def wait_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) until other processes keep fewer than ``threshold`` cores busy.

    Two OpenMP threads on a 2-core machine lose far more than their share when a third process competes
    (threads wait for each other at every barrier), so runs started on a busy machine are not comparable.
    Returns the busy cores measured last; the report shows it for every run.
    """
    end = time.monotonic() + max_wait
    busy = busy_cores()
    while busy > threshold and time.monotonic() < end:
        busy = busy_cores(5.0)
    if busy > threshold:
        log(f"[run] machine still busy ({busy:.2f} cores) after {max_wait:.0f} s; running anyway")
    return busy


def peer_cpu_tuning_env(precision: str) -> dict[str, str]:
    """``--peer-cpu-tuning``: what lit_rlhf's ``callbacks.cpu_tuning`` does, given to the peer process —
    glibc's mmap / trim thresholds at 2 GiB (the same ``mallopt`` values, read by glibc at start-up) and,
    under bf16, eager attention on its models (``trl_side.peer_attention``)."""
    env = {"MALLOC_MMAP_THRESHOLD_": str(2**31 - 1), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
    if precision == "bf16":
        env["LIT_BENCH_PEER_ATTN"] = "eager"
    return env


def run_side(
    python: str | Path,
    script: str,
    task: str,
    size: str,
    max_wait: float,
    precision: str = "fp32",
    extra_env: dict[str, str] | None = None,
) -> dict:
    busy = wait_quiet(max_wait)
    cmd = [str(python), str(HERE / script), task, size, precision]
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **(extra_env or {})})
    if p.returncode != 0:
        log(p.stdout[-3000:], p.stderr[-6000:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {p.returncode}")
    r = parse_result(p.stdout)
    r["wall_total_s"] = time.perf_counter() - t0
    r["loadavg_1min_start"] = load0
    r["busy_cores_before"] = busy
    return r


def matmul_peak(python: str, threads: int, precision: str = "fp32") -> float:
    """Best of 5 ``torch.mm`` 4096² in the precision's matmul dtype (GFLOP/s), in a fresh process."""
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[precision]
    out = subprocess.run(
        [python, "-c", PEAK_SNIPPET.format(threads=threads, dtype=dtype)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def fmt(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


def summarise(task: str, lit: list[dict], peer: list[dict], peak_gflops: float) -> dict:
    def med(rs, key):
        return median([r[key] for r in rs])

    lit_tp, peer_tp = med(lit, "throughput"), med(peer, "throughput")
    # robust to bursts of other load: units per step / median step time, pooled over all runs of a side
    lit_ms = lit[0]["per_step"] / median([x for r in lit for x in r["step_s"]])
    peer_ms = peer[0]["per_step"] / median([x for r in peer for x in r["step_s"]])
    units = lit[0]["throughput"] * lit[0]["seconds"]  # pairs or rollouts in the timed window
    lit_cpu = median([units / r["cpu_seconds"] for r in lit])
    peer_cpu = median([units / r["cpu_seconds"] for r in peer])
    return {
        "task": task,
        "unit": lit[0]["unit"],
        "lit": lit_tp,
        "peer": peer_tp,
        "ratio": lit_tp / peer_tp,
        "lit_ms": lit_ms,
        "peer_ms": peer_ms,
        "ratio_ms": lit_ms / peer_ms,
        "lit_per_cpu_s": lit_cpu,
        "peer_per_cpu_s": peer_cpu,
        "ratio_cpu": lit_cpu / peer_cpu,
        "lit_rss": med(lit, "peak_rss_mb"),
        "peer_rss": med(peer, "peak_rss_mb"),
        "lit_mfu": med(lit, "flops_per_s") / (peak_gflops * 1e9),
        "peer_mfu": med(peer, "flops_per_s") / (peak_gflops * 1e9),
        "lit_update_mfu": med(lit, "update_flops_per_s") / (peak_gflops * 1e9)
        if "update_flops_per_s" in lit[0]
        else None,
        "peer_update_mfu": med(peer, "update_flops_per_s") / (peak_gflops * 1e9)
        if "update_flops_per_s" in peer[0]
        else None,
        "runs_lit": [round(r["throughput"], 3) for r in lit],
        "runs_peer": [round(r["throughput"], 3) for r in peer],
        "load": [round(r["busy_cores_before"], 2) for r in lit + peer],
    }


def breakdown_table(name: str, runs: list[dict]) -> list[str]:
    keys = list(runs[0]["breakdown_s"])
    total = median([r["breakdown_s"]["step total"] for r in runs])
    lines = [f"| {name}: phase | median s / step | share |", "| --- | ---: | ---: |"]
    for k in keys:
        v = median([r["breakdown_s"].get(k, 0.0) for r in runs])
        lines.append(f"| {k} | {v:.3f} | {v / total:.0%} |")
    return lines


def report(s: Settings, peak: float, rows: list[dict], raw: dict, repeats: int, cmd: str) -> str:
    L = [
        "# lit_rlhf vs TRL on CPU",
        "",
        f"Regenerate: `{cmd}`",
        "",
        f"Model ({s.size}): {DESCRIPTION[s.size]}, random weights from one config "
        f"(`{json.dumps(MODELS[s.size])}`); {PRECISION_TEXT[s.precision]}, "
        f"torch.set_num_threads({s.threads}); "
        f"medians of {repeats} alternating runs, each side in its own subprocess.",
        f"Machine matmul peak ({s.precision} torch.mm 4096², {s.threads} threads): **{peak:.1f} GFLOP/s**. "
        "MFU = model FLOPs (6·N·tokens train, 2·N·tokens forward; N = all weights but the embedding "
        "tables, head included) / time / peak.",
        *(
            [
                "TRL ran with lit_rlhf's CPU settings (`--peer-cpu-tuning`: glibc mmap / trim thresholds "
                "2 GiB; eager attention under bf16), not as its users get it."
            ]
            if "--peer-cpu-tuning" in cmd
            else []
        ),
        "",
        "| task | lit_rlhf | TRL | ratio (lit/TRL) | from median step time: lit / TRL (ratio) "
        "| per CPU-second: lit / TRL (ratio) | peak RSS MB lit / TRL "
        "| MFU lit / TRL | runs lit · TRL | busy cores before each run (lit…, TRL…) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        mfu = f"{r['lit_mfu']:.1%} / {r['peer_mfu']:.1%}"
        if r["lit_update_mfu"] is not None:
            mfu += f" (update: {r['lit_update_mfu']:.1%} / {r['peer_update_mfu']:.1%})"
        L.append(
            f"| {r['task']} ({PEER_NAME[r['task']]}) | {fmt(r['lit'])} {r['unit']} "
            f"| {fmt(r['peer'])} {r['unit']} "
            f"| **{r['ratio']:.2f}x** | {fmt(r['lit_ms'])} / {fmt(r['peer_ms'])} ({r['ratio_ms']:.2f}x) "
            f"| {fmt(r['lit_per_cpu_s'])} / {fmt(r['peer_per_cpu_s'])} ({r['ratio_cpu']:.2f}x) "
            f"| {r['lit_rss']:.0f} / {r['peer_rss']:.0f} | {mfu} "
            f"| {r['runs_lit']} · {r['runs_peer']} | {r['load']} |"
        )
    L += ["", "Settings (both sides): `" + json.dumps(s.__dict__) + "`", ""]
    for task in raw:
        L.append(
            f"Work checked equal for {task}: lit `{json.dumps(raw[task]['lit'][0]['work'])}` · "
            f"TRL `{json.dumps(raw[task]['peer'][0]['work'])}`"
        )
        L.append("")
    for task in GROUP_TASKS:
        if task in raw:
            L.append(
                f"{task} configuration: lit_rlhf `{json.dumps(lit_group_kwargs(s, task))}` · "
                f"TRL `{json.dumps(trl_group_config(s, task))}`"
            )
            L.append("")
    for task in ("ppo", *GROUP_TASKS):
        if task in raw:
            L += breakdown_table(f"lit_rlhf {task.upper()} step", raw[task]["lit"]) + [""]
            L += breakdown_table(f"TRL {task.upper()} step", raw[task]["peer"]) + [""]
    L.append(
        "Versions: lit side "
        + json.dumps(next(iter(raw.values()))["lit"][0]["versions"])
        + "; peers "
        + "; ".join(json.dumps(raw[t]["peer"][0]["versions"]) for t in raw)
    )
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="toy", help="model shapes, lengths and batches")
    ap.add_argument("--repeats", type=int, default=3, help="alternating lit/peer runs per task")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated: {', '.join(TASKS)}")
    ap.add_argument("--out", default=None, help="markdown report (default benchmarks/results[-SIZE].md)")
    ap.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="bf16: bf16 autocast on both sides"
    )
    ap.add_argument("--max-wait", type=float, default=600, help="seconds to wait for a quiet machine per run")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one of the size's settings (common.Settings), e.g. ppo_max_new_tokens=256; repeatable",
    )
    ap.add_argument(
        "--generation",
        choices=("hf", "vllm"),
        default="hf",
        help="lit_rlhf's generation engine (vllm: run with an interpreter that has vLLM, LIT_PYTHON)",
    )
    ap.add_argument(
        "--peer-cpu-tuning",
        action="store_true",
        help="give the peer lit_rlhf's CPU settings (glibc thresholds; eager attention under bf16): how much "
        "of the lead they are",
    )
    ap.add_argument(
        "--sampled-tolerance",
        type=float,
        default=None,
        help="allowed relative difference of the sampled response-token counts (default work.SAMPLED's 15%%)",
    )
    a = ap.parse_args()
    if SIZES[a.size].override(a.set).ppo_samples_per_prompt != 1 and "ppo" in a.tasks.split(","):
        raise SystemExit(
            "--set ppo_samples_per_prompt: TRL's PPO samples one response per prompt (ab.py only)"
        )
    tasks = a.tasks.split(",")
    unknown = sorted(set(tasks) - set(PEER_VENV))
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; expected a subset of {','.join(TASKS)}")
    lit_py = lit_python()
    for t in tasks:
        if not peer_python(t).exists():
            raise SystemExit(f"{peer_python(t)} missing: run `bash benchmarks/setup_peers.sh {lit_py}` first")
    out = Path(a.out or HERE / results_name(a.size, a.precision))
    sets = [arg for item in a.set for arg in ("--set", item)]
    subprocess.run([lit_py, str(HERE / "prepare.py"), "--size", a.size, *sets], check=True, env=ENV)
    s = Settings.load(a.size, a.precision)
    wait_quiet(a.max_wait)
    peak = matmul_peak(lit_py, s.threads, s.precision)
    log(f"[run] {lit_py}; matmul peak {peak:.1f} GFLOP/s, load average {os.getloadavg()[0]:.1f}")
    cmd = "bash benchmarks/setup_peers.sh && .venv/bin/python benchmarks/run.py"
    for flag, value, default in (
        ("size", a.size, "toy"),
        ("repeats", a.repeats, 3),
        ("tasks", a.tasks, ",".join(TASKS)),
        ("precision", a.precision, "fp32"),
    ):
        if value != default:
            cmd += f" --{flag} {value}"
    cmd += "".join(f" --set {item}" for item in a.set)
    peer_env = peer_cpu_tuning_env(s.precision) if a.peer_cpu_tuning else {}
    if a.peer_cpu_tuning:
        cmd += " --peer-cpu-tuning"
    lit_env = {"LIT_RLHF_BENCH_GENERATION": a.generation}
    if a.generation != "hf":
        cmd += f" --generation {a.generation}"
    rows, raw = [], {}
    for task in tasks:
        lit, peer = [], []
        for i in range(a.repeats):
            order = [("lit", lit_py, "lit_side.py"), ("peer", peer_python(task), PEER_SCRIPT[task])]
            if i % 2:
                order.reverse()  # alternate who goes first
            for who, py, script in order:
                env = peer_env if who == "peer" else lit_env
                r = run_side(py, script, task, a.size, a.max_wait, s.precision, env)
                (lit if who == "lit" else peer).append(r)
                log(
                    f"[run] {task} #{i} {who}: {r['throughput']:.3f} {r['unit']}, "
                    f"rss {r['peak_rss_mb']:.0f} MB, "
                    f"load {r['loadavg_1min_start']:.1f}"
                )
        expected = expected_work(task, s)
        try:
            for l_run, p_run in zip(lit, peer):
                check_versions(l_run["versions"], p_run["versions"])
                verify_work(task, l_run["work"], p_run["work"], expected, a.sampled_tolerance)
        except UnequalWork as e:
            raise SystemExit(str(e)) from None
        raw[task] = {"lit": lit, "peer": peer}
        rows.append(summarise(task, lit, peer, peak))
        md = report(
            s, peak, rows, raw, a.repeats, cmd
        )  # written after each task: a partial run still reports
        (runs_dir(a.size) / "raw.json").write_text(json.dumps({"peak_gflops": peak, **raw}, indent=1))
        out.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
