"""Shared prefix against plain in one process, the arms switching every iteration (GRPO or RLOO).

    .venv/bin/python benchmarks/prepare.py --size smollm2   # once (run.py does it too)
    .venv/bin/python benchmarks/interleaved.py [--task grpo] [--group-size 4] [--pairs 12] [--precision bf16]

``ab.py`` runs each arm in its own process, one run (≈ 1.5 min) after the other, and compares medians of 3
runs. This machine's speed drifts by 5–10 % from one minute to the next, so a 2–4 % question (is G = 4's
speed-up 1.57× or 1.6×?) stays open under it. Here one Trainer runs one module, and a callback switches it
between the arms before every iteration in the order plain, shared (the warm-up), then shared, plain, plain,
shared, … (ABBA: a drift during the run weighs on both arms alike). The arms:

* ``plain``: ``shared_prefix=false``, ``minibatch_by_group=false``, HF generation prefilling every row;
* ``shared+groups``: each prompt once per group in the forwards and the prefill, minibatches of whole groups;

both with π_old of every row from the rollout (as ``ab.py``'s arms). The measure is ab.py's "rollout forwards
+ update": the iteration's ``training_step`` less its generation. Each timed pair of adjacent iterations (one
per arm) gives a ratio; the output is the median of the pair ratios with their range, and the ratio of the
arms' medians. The weights both arms train are one model: the iteration's work (shapes, rows, minibatches)
does not depend on them. vLLM generation is not switchable inside a run (its prefix cache is the engine's);
the forwards and the update do not use it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

PLAIN, SHARED = "plain", "shared+groups"
GENERATION = "rollout: generation"


def arm_order(pairs: int) -> list[str]:
    """The arm of each iteration: plain, shared (warm-up), then ``pairs`` timed pairs in ABBA order."""
    abba = [SHARED, PLAIN, PLAIN, SHARED]
    return [PLAIN, SHARED] + [abba[i % 4] for i in range(2 * pairs)]


def summarise(arms: list[str], per_step: list[dict[str, float]], warmup: int = 2) -> dict:
    """Each timed iteration's rollout forwards + update (``training_step`` less generation), per arm, the
    ratio plain / shared of each adjacent pair, and their medians."""
    seconds = {PLAIN: [], SHARED: []}
    pair_ratios = []
    timed = [(arm, d["training_step"] - d.get(GENERATION, 0.0)) for arm, d in zip(arms, per_step)][warmup:]
    for i, (arm, t) in enumerate(timed):
        seconds[arm].append(t)
        if i % 2:
            pair = dict(timed[i - 1 : i + 1])
            if set(pair) != {PLAIN, SHARED}:
                raise ValueError(f"iterations {i - 1 + warmup} and {i + warmup} are not one of each arm")
            pair_ratios.append(pair[PLAIN] / pair[SHARED])
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {
        "seconds": seconds,
        "median": med,
        "pair_ratios": pair_ratios,
        "median_pair_ratio": statistics.median(pair_ratios),
        "ratio_of_medians": med[PLAIN] / med[SHARED],
    }


def switch(module, arm: str) -> None:
    """Put ``module`` (a policy module with HF generation) in ``arm``."""
    on = arm == SHARED
    module.share_prefix = module.minibatch_by_group = on
    module.generation.share_prefix = on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("grpo", "rloo"), default="grpo")
    ap.add_argument("--size", default="smollm2")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=12, help="timed pairs of iterations (one of each arm)")
    a = ap.parse_args()
    if os.environ.get("LIT_RLHF_BENCH_GENERATION", "hf") != "hf":
        raise SystemExit("interleaved.py switches HF generation's prefill: unset LIT_RLHF_BENCH_GENERATION")

    import lightning as L  # noqa: PLC0415
    import lit_side as ls  # noqa: PLC0415
    from common import Settings  # noqa: PLC0415
    from group import group_plan  # noqa: PLC0415

    from lit_rlhf.models.factory import quiet_transformers  # noqa: PLC0415

    warnings.filterwarnings("ignore")
    quiet_transformers()
    _, s = Settings.from_argv([a.task, a.size, a.precision])
    s = s.override(
        [
            f"group_size={a.group_size}",
            "old_logprobs_from_update=false",  # π_old of every row in the rollout, as ab.py's arms
            "logprobs=chunked",
            "group_warmup_steps=2",
            f"group_steps={2 * a.pairs}",
        ]
    )
    ls.setup_threads(s.threads)
    plan = group_plan(s, a.task)
    module, cls, tok = ls.group_module(s, a.task)
    per_step, phases, _ = ls.instrument(module, cls)
    order = arm_order(a.pairs)

    class Switch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            switch(pl_module, order[batch_idx])

    tr = ls.trainer([Switch(), ls.Meter(count_batch_tokens=False), phases], plan.iterations, s)
    L.seed_everything(s.seed, verbose=False)
    tr.fit(module, datamodule=ls.prompt_data(s, tok, plan.prompts, plan.iterations))
    out = summarise(order, per_step)
    r = out["pair_ratios"]
    print(
        f"\n{a.task}, {a.size}, {a.precision}, G = {a.group_size}: rollout forwards + update, seconds per "
        f"iteration, {a.pairs} pairs alternating in one process (ABBA)\n"
    )
    print("| arm | median | iterations |\n| --- | ---: | --- |")
    for arm in (PLAIN, SHARED):
        print(f"| {arm} | {out['median'][arm]:.2f} | {[round(x, 2) for x in out['seconds'][arm]]} |")
    print(
        f"\nplain / shared+groups: median of the pair ratios **{out['median_pair_ratio']:.2f}×** (pairs "
        f"{min(r):.2f}–{max(r):.2f}×, in run order {[round(x, 2) for x in r]}); ratio of the medians "
        f"{out['ratio_of_medians']:.2f}×"
    )


if __name__ == "__main__":
    main()
