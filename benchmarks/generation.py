"""``generation=vllm`` against ``generation=hf``: lit_rlhf's policy tasks, same settings, alternating runs.

    python benchmarks/prepare.py --size smollm2          # once (random weights of SmolLM2-135M's shapes)
    python benchmarks/generation.py --size smollm2 --task grpo --precision bf16 --repeats 3

Run it with an interpreter that has vLLM (the `.venv-vllm` of .ci/run on CPU): both arms run in it, so torch
and transformers are the same. Each run is ``lit_side.py TASK SIZE PRECISION`` in its own subprocess with
``LIT_RLHF_BENCH_GENERATION`` = ``hf`` or ``vllm``, alternating ``--repeats`` times; the work both report
(iterations, optimizer steps, rollouts, prompt tokens, generated positions; response tokens within 2 %: the
arms sample different responses) must be equal before the medians of rollouts/s and the phase split are
printed (and written to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import PRECISIONS, SIZES, median, parse_result  # noqa: E402

ARMS = ("hf", "vllm")


def one_run(task: str, size: str, precision: str, arm: str) -> dict:
    env = {**os.environ, "LIT_RLHF_BENCH_GENERATION": arm}
    cmd = [sys.executable, str(HERE / "lit_side.py"), task, size, precision]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE.parent)
    if out.returncode:
        raise SystemExit(f"{arm} run failed:\n{out.stderr[-3000:]}")
    return parse_result(out.stdout)


def check_work(works: dict[str, list[dict]], tolerance: float = 0.02) -> None:
    """Equal work on both arms: iterations, optimizer steps, rollouts, prompts, prompt tokens and generated
    positions exactly; the response tokens (the arms sample different responses, so responses that end
    with EOS end at other places) within ``tolerance``."""
    ref = works["hf"][0]
    loose = {"response_tokens", "tokens"}
    for arm, ws in works.items():
        for w in ws:
            exact = {k for k in ref if k not in loose and w.get(k) != ref[k]}
            off = {k for k in loose if abs(w[k] - ref[k]) > tolerance * ref[k]}
            if exact or off:
                raise SystemExit(f"unequal work ({arm}: {sorted(exact | off)}): {works}")


def table(results: dict[str, list[dict]], task: str, size: str, precision: str) -> str:
    rows = [f"{task}, {size}, {precision} — medians of {len(results['hf'])} alternating runs", ""]
    rows += [
        "| generation | rollouts/s | step s | rollout: generation s | update s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        rs = results[arm]
        gen = median([r["breakdown_s"].get("rollout: generation", 0.0) for r in rs])
        upd = median([r["breakdown_s"].get("update: backward + optimizer + loss maths", 0.0) for r in rs])
        tput = median([r["throughput"] for r in rs])
        rows.append(
            f"| {arm} | {tput:.2f} | {median([r['step_s'] for r in rs]):.2f} | {gen:.2f} | {upd:.2f} |"
        )
    ratio = median([r["throughput"] for r in results["vllm"]]) / median(
        [r["throughput"] for r in results["hf"]]
    )
    rows += ["", f"vllm / hf rollouts/s: {ratio:.2f}x"]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="smollm2")
    ap.add_argument("--task", choices=("grpo", "rloo", "ppo"), default="grpo")
    ap.add_argument("--precision", choices=PRECISIONS, default="bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the table here (markdown)")
    a = ap.parse_args()
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for i in range(a.repeats):
        for arm in ARMS if i % 2 == 0 else ARMS[::-1]:  # alternate which arm runs first
            results[arm].append(one_run(a.task, a.size, a.precision, arm))
            print(
                f"[generation] {arm} run {i + 1}: {results[arm][-1]['throughput']:.2f} rollouts/s", flush=True
            )
    check_work({arm: [r["work"] for r in rs] for arm, rs in results.items()})
    text = table(results, a.task, a.size, a.precision)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
