"""Benchmark driver: lit_rlhf vs TRL on the same model, tokenizer, data and settings, on CPU.

    bash benchmarks/setup_peers.sh && /work/venv/bin/python benchmarks/run.py [--repeats 3] [--tasks rm,ppo]

1. ``prepare.py`` writes settings, world, model files and data (``benchmarks/runs/``);
2. the machine's fp32 matmul peak is measured (``torch.mm`` 4096², all ``threads`` cores);
3. for each task, lit_rlhf and the peer alternate ``--repeats`` times, each run in its own subprocess (peak
   RSS = that process's ``ru_maxrss``);
4. the work both report (optimizer steps, sequences, tokens) is checked equal before any ratio is printed;
5. medians go to a markdown table, printed and written to ``benchmarks/results.md``.
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
from common import HERE, RUNS, Settings, check_equal, log, median, parse_result  # noqa: E402

LIT_PY = os.environ.get("LIT_PYTHON", "/work/venv/bin/python")
PEERS = {
    "rm": HERE / ".venvs" / "trl116" / "bin" / "python",
    "ppo": HERE / ".venvs" / "trl112" / "bin" / "python",
}
PEER_NAME = {"rm": "TRL 1.16.0 RewardTrainer", "ppo": "TRL 1.12.0 experimental PPOTrainer"}
# what must match: reward model batches are identical (same pairs, same order); PPO responses are sampled,
# so tokens up to EOS may differ slightly between the two samplers
EXACT = {
    "rm": ("optimizer_steps", "pairs", "sequences", "tokens", "padded_positions"),
    "ppo": ("ppo_iterations", "minibatch_updates", "rollouts", "prompt_tokens", "generated_positions"),
}
APPROX = {"rm": {}, "ppo": {"response_tokens": 0.15, "tokens": 0.15}}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}

PEAK_SNIPPET = """
import time, torch
torch.set_num_threads({threads})
n = 4096
a, b = torch.randn(n, n), torch.randn(n, n)
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


def run_side(python: str | Path, script: str, task: str, max_wait: float) -> dict:
    busy = wait_quiet(max_wait)
    cmd = [str(python), str(HERE / script), task]
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if p.returncode != 0:
        log(p.stdout[-3000:], p.stderr[-6000:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {p.returncode}")
    r = parse_result(p.stdout)
    r["wall_total_s"] = time.perf_counter() - t0
    r["loadavg_1min_start"] = load0
    r["busy_cores_before"] = busy
    return r


def matmul_peak(threads: int) -> float:
    out = subprocess.run(
        [LIT_PY, "-c", PEAK_SNIPPET.format(threads=threads)], capture_output=True, text=True, check=True
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
        f"Model: GPT-2 from one config, {s.n_layer} layers x {s.n_embd} dims, {s.n_head} heads, the embedded "
        f"world's word-level tokenizer; fp32, torch.set_num_threads({s.threads}); medians of {repeats} "
        "alternating runs, each side in its own subprocess.",
        f"Machine matmul peak (fp32 torch.mm 4096², {s.threads} threads): **{peak:.1f} GFLOP/s**. "
        "MFU = model FLOPs (6·N·tokens train, 2·N·tokens forward; N = block + head weights) / time / peak.",
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
    if "ppo" in raw:
        L += breakdown_table("lit_rlhf PPO step", raw["ppo"]["lit"]) + [""]
        L += breakdown_table("TRL PPO step", raw["ppo"]["peer"]) + [""]
    L.append(
        "Versions: lit side "
        + json.dumps(next(iter(raw.values()))["lit"][0]["versions"])
        + "; peers "
        + "; ".join(json.dumps(raw[t]["peer"][0]["versions"]) for t in raw)
    )
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="alternating lit/peer runs per task")
    ap.add_argument("--tasks", default="rm,ppo", help="comma-separated: rm, ppo")
    ap.add_argument("--out", default=str(HERE / "results.md"))
    ap.add_argument("--max-wait", type=float, default=600, help="seconds to wait for a quiet machine per run")
    a = ap.parse_args()
    tasks = a.tasks.split(",")
    for t in tasks:
        if not PEERS[t].exists():
            raise SystemExit(f"{PEERS[t]} missing: run `bash benchmarks/setup_peers.sh` first")
    subprocess.run([LIT_PY, str(HERE / "prepare.py")], check=True, env=ENV)
    s = Settings.load()
    wait_quiet(a.max_wait)
    peak = matmul_peak(s.threads)
    log(f"[run] matmul peak {peak:.1f} GFLOP/s, load average {os.getloadavg()[0]:.1f}")
    rows, raw = [], {}
    for task in tasks:
        lit, peer = [], []
        for i in range(a.repeats):
            order = [("lit", LIT_PY, "lit_side.py"), ("peer", PEERS[task], "trl_side.py")]
            if i % 2:
                order.reverse()  # alternate who goes first
            for who, py, script in order:
                r = run_side(py, script, task, a.max_wait)
                (lit if who == "lit" else peer).append(r)
                log(
                    f"[run] {task} #{i} {who}: {r['throughput']:.3f} {r['unit']}, "
                    f"rss {r['peak_rss_mb']:.0f} MB, "
                    f"load {r['loadavg_1min_start']:.1f}"
                )
        for l_run, p_run in zip(lit, peer):
            bad = check_equal(l_run["work"], p_run["work"], EXACT[task], APPROX[task])
            if bad:
                raise SystemExit(f"{task}: the two sides did not do the same work: {bad}")
        raw[task] = {"lit": lit, "peer": peer}
        rows.append(summarise(task, lit, peer, peak))
        cmd = "bash benchmarks/setup_peers.sh && /work/venv/bin/python benchmarks/run.py"
        if a.repeats != 3 or a.tasks != "rm,ppo":
            cmd += f" --repeats {a.repeats} --tasks {a.tasks}"
        md = report(
            s, peak, rows, raw, a.repeats, cmd
        )  # written after each task: a partial run still reports
        (RUNS / "raw.json").write_text(json.dumps({"peak_gflops": peak, **raw}, indent=1))
        Path(a.out).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
