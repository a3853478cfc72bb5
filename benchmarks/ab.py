"""lit_rlhf against itself: two or more arms of one policy task, same settings otherwise, alternating runs.

    python benchmarks/prepare.py --size smollm2          # once (random weights of SmolLM2-135M's shapes)
    python benchmarks/ab.py --task grpo --precision bf16 --set group_size=4 \\
        --arm plain shared_prefix=false --arm shared shared_prefix=true
    python benchmarks/ab.py --task grpo --precision bf16 --arm hf generation=hf --arm vllm generation=vllm

An arm is a name and ``KEY=VALUE`` settings (``common.Settings``, as ``run.py --set``), plus the pseudo-key
``generation=hf|vllm`` (``$LIT_RLHF_BENCH_GENERATION``); ``--set`` applies to every arm. lit_rlhf's switches
(``SWITCHES``) start from their defaults, not from what run.py's last ``--set`` left in the settings file.
Each run is ``lit_side.py TASK SIZE PRECISION`` in its own subprocess with the arm's settings in
``$LIT_RLHF_BENCH_SET``, the arms' order alternating over ``--repeats``. The work all arms report
(iterations, optimizer steps, rollouts, prompt tokens, generated positions exactly; response tokens within
``--tolerance``: arms may sample different responses) must be equal before the medians are printed:
rollouts/s, the step, generation, the rollout forwards (policy, reference, critic, reward), the update
(forward, backward, optimizer) and forwards + update, each arm's ratio to the first. Run it with an
interpreter that has everything the arms need (vLLM for ``generation=vllm``: the ``.venv-vllm`` of .ci/run).

Then (unless ``--no-floor``) each arm's phases as multiples of their own floor on this machine, timed after
the runs: ``ceiling.py``'s matmuls plus the faster attention kernel at the arm's shapes — the shared-prefix
floor for an arm that shares (each group's prompt once), the equal-work floor otherwise. The update is split
into its forward + backward (matmuls and attention; the loss maths have no floor of their own) and its
optimizer steps, whose floor is a bare fused AdamW step over the same weights, timed alone
(``ceiling.optimizer_seconds``). Arms that do the same work (generation engine, compiled or not, where
π_old comes from and how log-probs are computed aside) share one timing of the floor, so that their
multiples compare without the floor's own timing noise;
each phase's floor is the fastest of ``FLOOR_PASSES`` timings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import PRECISIONS, SIZES, Settings, median, parse_result  # noqa: E402
from run import wait_quiet  # noqa: E402

FORWARDS = "rollout forwards"  # policy, reference, critic and reward forwards of the rollout
UPDATE = "update"  # update forward + backward + optimizer + loss maths
TRAIN = "update fwd + bwd"  # the update without its optimizer steps
OPTIMIZER = "optimizer"
# settings that leave the floor's work as it is: the floor counts no π_old forward in the rollout (two
# forwards for the critic-free tasks: reference and reward), so arms that differ only there share one floor
SAME_FLOOR = "any"
# timings of each floor; a phase's floor is the fastest (timed back to back in one process, the whole
# GRPO G = 4 shared floor gave 6.09, 5.11, 4.96, 4.73, 4.84 s: the first pass was the slow one)
FLOOR_PASSES = 3
# lit_rlhf's switches start from Settings' defaults in every arm, not from runs/<size>/settings.json (which
# run.py's --set rewrites): an arm runs what its command line says
SWITCHES = (
    "shared_prefix",
    "minibatch_by_group",
    "old_logprobs_from_update",
    "logprobs",
    "vllm_enforce_eager",
)


def switch_defaults() -> list[str]:
    """``KEY=VALUE`` of every switch at its ``Settings`` default (before ``--set`` and the arm's own)."""
    default = {f.name: f.default for f in fields(Settings)}
    return [f"{k}={default[k]}" for k in SWITCHES]


def phases(result: dict) -> dict[str, float]:
    """A run's step split into generation, rollout forwards and update, and the update's optimizer steps
    (seconds per iteration; 0 for the optimizer of a run that did not time it)."""
    b = result["breakdown_s"]
    forwards = sum(v for k, v in b.items() if k.startswith("rollout:") and k != "rollout: generation")
    update = sum(v for k, v in b.items() if k.startswith("update"))
    optimizer = b.get("update: optimizer", 0.0)
    return {
        "step": b["step total"],
        "generation": b.get("rollout: generation", 0.0),
        FORWARDS: forwards,
        UPDATE: update,
        f"{FORWARDS} + {UPDATE}": forwards + update,
        TRAIN: update - optimizer,
        OPTIMIZER: optimizer,
    }


def one_run(task: str, size: str, precision: str, settings: list[str], common: list[str]) -> dict:
    generation = [kv.partition("=")[2] for kv in settings if kv.startswith("generation=")]
    rest = switch_defaults() + [kv for kv in common + settings if not kv.startswith("generation=")]
    env = {**os.environ, "LIT_RLHF_BENCH_SET": " ".join(rest)}
    if generation:
        env["LIT_RLHF_BENCH_GENERATION"] = generation[-1]
    cmd = [sys.executable, str(HERE / "lit_side.py"), task, size, precision]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE.parent)
    if out.returncode:
        raise SystemExit(f"arm {settings} failed:\n{out.stderr[-3000:]}")
    return parse_result(out.stdout)


def check_work(works: dict[str, list[dict]], tolerance: float) -> None:
    """Equal work on every arm: all counters exactly but the response tokens (within ``tolerance``)."""
    first = next(iter(works))
    ref = works[first][0]
    loose = {"response_tokens", "tokens"}
    for arm, ws in works.items():
        for w in ws:
            exact = {k for k in ref if k not in loose and w.get(k) != ref[k]}
            off = {k for k in loose if k in ref and abs(w[k] - ref[k]) > tolerance * ref[k]}
            if exact or off:
                raise SystemExit(f"unequal work ({arm} against {first}: {sorted(exact | off)}): {works}")


def medians(results: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Each arm's median rollouts/s and phase times."""
    return {
        arm: {"rollouts/s": median([r["throughput"] for r in rs])}
        | {c: median([phases(r)[c] for r in rs]) for c in phases(rs[0])}
        for arm, rs in results.items()
    }


def table(results: dict[str, list[dict]], title: str) -> str:
    arms = list(results)
    n = len(results[arms[0]])
    cols = ["step", "generation", FORWARDS, UPDATE, f"{FORWARDS} + {UPDATE}"]
    rows = [f"{title} — medians of {n} alternating runs (seconds per iteration)", ""]
    rows += ["| arm | rollouts/s | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * (len(cols) + 1)]
    med = medians(results)
    for arm in arms:
        m = med[arm]
        rows.append(f"| {arm} | {m['rollouts/s']:.3f} | " + " | ".join(f"{m[c]:.2f}" for c in cols) + " |")
    base = arms[0]
    for arm in arms[1:]:
        a, b = med[arm], med[base]
        rows.append("")
        rows.append(
            f"{arm} / {base}: rollouts/s {a['rollouts/s'] / b['rollouts/s']:.2f}x; "
            f"{FORWARDS} + {UPDATE} {b[cols[-1]] / a[cols[-1]]:.2f}x faster; "
            f"{FORWARDS} {b[FORWARDS] / a[FORWARDS]:.2f}x, {UPDATE} {b[UPDATE] / a[UPDATE]:.2f}x, "
            f"generation {b['generation'] / a['generation']:.2f}x"
        )
    return "\n".join(rows)


def floor_table(
    task: str, size: str, precision: str, arms: dict[str, list[str]], common: list[str], med: dict
) -> str:
    """Each arm's median phases as multiples of the arm's own floor (see the module's doc)."""
    import torch  # noqa: PLC0415  (the driver needs torch only for the floor)
    from ceiling import optimizer_seconds, step_bounds  # noqa: PLC0415

    cols = ["generation", FORWARDS, TRAIN, OPTIMIZER]
    rows = [
        "Each phase as a multiple of its own floor (matmuls + the faster attention kernel; the optimizer: "
        "bare fused AdamW steps over the same weights; ceiling.py, timed on this machine after the runs); "
        "the step's floor / measured step = the share of the floor's speed",
        "",
        "| arm | floor | step floor (s) | " + " | ".join(cols) + " | step | share of the floor's speed |",
        "| --- | --- |" + " ---: |" * (len(cols) + 3),
    ]
    floors: dict[tuple, dict[str, float]] = {}  # arms that do the same work share one timing of the floor
    for name, settings in arms.items():
        s = Settings.load(size, precision).override(
            switch_defaults() + [kv for kv in common + settings if not kv.startswith("generation=")]
        )
        torch.set_num_threads(s.threads)
        group = s.ppo_samples_per_prompt if task == "ppo" else s.group_size
        shared = group > 1 and s.shared_prefix != "false"
        key = (
            shared,
            replace(
                s, old_logprobs_from_update=SAME_FLOOR, logprobs=SAME_FLOOR, vllm_enforce_eager=SAME_FLOOR
            ),
        )
        if key not in floors:  # each phase's fastest of FLOOR_PASSES timings (the first is often slow)
            passes = []
            for _ in range(FLOOR_PASSES):
                b = step_bounds(task, s, shared)
                floor = {c: b.phases[c] + b.attention[c] for c in ("generation", FORWARDS)}
                floor[TRAIN] = b.phases[UPDATE] + b.attention[UPDATE]
                floor[OPTIMIZER] = optimizer_seconds(task, s)
                passes.append(floor)
            floors[key] = {c: min(p[c] for p in passes) for c in cols}
        floor = floors[key]
        total = sum(floor.values())
        cells = " | ".join(f"{med[name][c] / floor[c]:.2f}x" for c in cols)
        kind = "shared prefix" if shared else "equal work"
        rows.append(
            f"| {name} | {kind} | {total:.2f} | {cells} | {med[name]['step'] / total:.2f}x "
            f"| {total / med[name]['step']:.0%} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="smollm2")
    ap.add_argument("--task", choices=("grpo", "rloo", "ppo"), default="grpo")
    ap.add_argument("--precision", choices=PRECISIONS, default="bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arm", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every arm")
    ap.add_argument("--tolerance", type=float, default=0.02, help="response tokens, relative")
    ap.add_argument("--out", default=None, help="also write the table here (markdown)")
    ap.add_argument("--no-floor", action="store_true", help="leave out the phases' multiples of their floor")
    ap.add_argument("--max-wait", type=float, default=600, help="seconds to wait for a quiet machine per run")
    a = ap.parse_args(argv)
    arms = {name: settings for name, *settings in a.arm}
    if len(arms) < 2:
        raise SystemExit("--arm: give at least two arms, with different names")
    results: dict[str, list[dict]] = {name: [] for name in arms}
    order = list(arms)
    for i in range(a.repeats):
        for name in order if i % 2 == 0 else order[::-1]:  # alternate which arm runs first
            busy = wait_quiet(a.max_wait)  # another process's work would land in this arm's times
            results[name].append(one_run(a.task, a.size, a.precision, arms[name], a.set))
            r = results[name][-1]
            print(
                f"[ab] {name} run {i + 1} (busy cores before {busy:.2f}): {r['throughput']:.3f} rollouts/s "
                f"{ {k: round(v, 2) for k, v in phases(r).items()} }",
                flush=True,
            )
    check_work({name: [r["work"] for r in rs] for name, rs in results.items()}, a.tolerance)
    sets = "".join(f" --set {kv}" for kv in a.set)
    arm_args = "".join(f" --arm {name} {' '.join(s)}" for name, s in arms.items())
    cmd = f"python benchmarks/ab.py --size {a.size} --task {a.task} --precision {a.precision}"
    cmd += f" --repeats {a.repeats}{sets}{arm_args}"
    text = table(results, f"{a.task}, {a.size}, {a.precision}{sets}")
    if not a.no_floor:
        text += "\n\n" + floor_table(a.task, a.size, a.precision, arms, a.set, medians(results))
    text += f"\n\nCommand: `{cmd}`"
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
