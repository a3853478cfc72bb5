"""The policy's forward + backward over one group, three ways: plain, split (prompt pass, then the responses
on its gathered KV cache) and grouped (one packed forward, Prefix Grouper's attention), at SmolLM2-135M's
shapes. The update's inner loop, without the optimizer.

    .venv/bin/python benchmarks/prepare.py --size smollm2   # once (run.py does it too)
    .venv/bin/python benchmarks/shared_forward.py [--group-size G] [--precision fp32] [--profile]
        [--autograd-logprobs]

Each path is timed ``--repeats`` times, alternating, after one warm-up round; the table gives the median
seconds and the speed-up over plain. The same log-probs within fp tolerance are checked first. ``--profile``
adds torch.profiler's self time per op for one more step of each path (the ops that take the most).

``--bound`` adds what each path could take at best: a forward + backward has a cost that does not grow with
the tokens (each weight cast to bf16 and its gradient back to fp32, the tied embedding's dense gradient,
every op's dispatch), timed here as the same step over one 8-token prompt and two 4-token responses
(``F``); the rest of plain's time scales at most with the matmul FLOPs, so a path that does a share ``s``
of plain's matmul FLOPs takes at least ``F + (plain − F)·s``, and sharing speeds the step up at most
``plain / (F + (plain − F)·s)``. F overstates the fixed part (its 12-token matmuls are bound by reading the
weights, which a long step hides inside compute-bound work), so this bound errs low by a few per cent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from common import matmul_params, runs_dir  # noqa: E402

P, R = 128, 64


def with_autograd_logprobs(fn):
    """``fn`` with token log-probs as the release before computed them (``logprobs.autograd``)."""
    from logprobs import autograd  # noqa: PLC0415

    from lit_rlhf.rlhf.logprobs import SelectiveLogSoftmax  # noqa: PLC0415

    def run(*a):
        SelectiveLogSoftmax.apply = staticmethod(autograd)
        try:
            return fn(*a)
        finally:
            del SelectiveLogSoftmax.apply  # back to autograd.Function's own

    return run


def paths(autograd_logprobs: bool = False):
    from lit_rlhf.rollout import shared_prefix as sp  # noqa: PLC0415
    from lit_rlhf.rollout.rollout import token_logprobs  # noqa: PLC0415

    def split(*a):
        groupable, sp._groupable = sp._groupable, lambda model: False
        try:
            return sp.token_logprobs(*a)
        finally:
            sp._groupable = groupable

    out = {"plain": token_logprobs, "split": split, "grouped": sp.token_logprobs}
    if autograd_logprobs:
        out |= {f"{k}, autograd log-probs": with_autograd_logprobs(out[k]) for k in ("plain", "grouped")}
    return out


def matmul_rows(path: str, N: int, U: int, P: int, R: int) -> tuple[int, int]:
    """(rows through the transformer body's Linear layers, rows through the LM head) of one forward of
    ``path`` over N rows of U distinct prompts, as lit_rlhf runs it: plain keeps R + 1 logits per row
    (``logits_to_keep``); grouped and split run each prompt once and R − 1 tokens per response (the last
    response token predicts nothing), and the head over those and one prompt position per prompt."""
    if path.startswith("plain"):
        return N * (P + R), N * (R + 1)
    return U * P + N * (R - 1), U + N * (R - 1)


def best_seconds(plain: float, fixed: float, share: float) -> float:
    """The least time a path doing ``share`` of plain's matmul FLOPs can take, given plain's time and the
    fixed cost ``fixed`` (what a step over almost no tokens takes)."""
    return fixed + (plain - fixed) * share


def batch(vocab: int, G: int, prompts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``prompts`` prompts × G responses; the first prompt left-padded by 5, one response 7 tokens short."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(3, vocab, (prompts, P), generator=gen).repeat_interleave(G, 0)
    ids = torch.cat([x, torch.randint(3, vocab, (prompts * G, R), generator=gen)], 1)
    mask = torch.ones_like(ids)
    mask[:G, :5], mask[1, -7:] = 0, 0
    return ids, mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=1, help="groups per minibatch")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--bound", action="store_true", help="also the fixed cost and each path's best time")
    ap.add_argument(
        "--autograd-logprobs",
        action="store_true",
        help="also plain and grouped with the release before's log-probs",
    )
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    from lit_rlhf.callbacks.cpu_tuning import keep_freed_memory  # noqa: PLC0415

    keep_freed_memory()
    torch.set_num_threads(2)
    bf16 = args.precision == "bf16"  # lit_rlhf's bf16-mixed: fp32 weights, bf16 autocast, eager attention
    model = AutoModelForCausalLM.from_pretrained(
        runs_dir("smollm2") / "models" / "policy", attn_implementation="eager" if bf16 else "sdpa"
    ).train()
    ids, mask = batch(model.config.vocab_size, args.group_size, args.prompts)
    fns = paths(args.autograd_logprobs)

    def step(fn, ids=ids, mask=mask) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            lp = fn(model, ids, mask, P, 1.0)
            (lp * mask[:, P:]).sum().backward()
        model.zero_grad(set_to_none=True)
        return lp.detach()

    out = {k: step(f) for k, f in fns.items()}  # warm-up, and the same log-probs
    keep = mask[:, P:].bool()
    for k in list(fns)[1:]:
        gap = float((out[k] - out["plain"])[keep].abs().max())
        print(f"max |log p({k}) - log p(plain)| = {gap:.2e}")
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(args.repeats):
        for k in list(fns)[:: 1 if i % 2 == 0 else -1]:
            t = time.perf_counter()
            step(fns[k])
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\n{args.prompts} prompt(s) × G = {args.group_size}, {P} + {R} tokens, {args.precision}, forward + "
        f"backward of the policy's log-probs, medians of {args.repeats} alternating runs\n"
    )
    print("| path | seconds | speed-up over plain | runs |\n| --- | ---: | ---: | --- |")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {med['plain'] / v:.2f}x | {[round(t, 3) for t in times[k]]} |")
    if args.bound:
        bound(model, step, fns, med, args.group_size, args.prompts, args.repeats)
    if args.profile:
        profile(step, fns)


def bound(model, step, fns, med: dict, G: int, U: int, repeats: int) -> None:
    global P, R
    full = P, R
    P, R = 8, 4
    try:
        ids, mask = batch(model.config.vocab_size, 2, 1)
        for _ in range(2):  # warm-up
            step(fns["plain"], ids, mask)
        fixed = []
        for _ in range(repeats):
            t = time.perf_counter()
            step(fns["plain"], ids, mask)
            fixed.append(time.perf_counter() - t)
    finally:
        P, R = full
    F = statistics.median(fixed)
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    body = matmul_params(model) - hidden * vocab

    def flops(path: str) -> int:
        rows, head = matmul_rows(path, U * G, U, P, R)
        return rows * body + head * hidden * vocab

    plain = med["plain"]
    print(
        f"\nFixed cost F (the same forward + backward over 8 + 4 tokens, median of {repeats}): {F:.3f} s. "
        "Best = F + (plain − F) × the path's share of plain's matmul FLOPs.\n"
    )
    print("| path | seconds | matmul FLOPs / plain's | best | seconds / best | speed-up bound |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for k, v in med.items():
        share = flops(k) / flops("plain")
        best = best_seconds(plain, F, share)
        print(f"| {k} | {v:.3f} | {share:.3f} | {best:.3f} | {v / best:.2f} | {plain / best:.2f}x |")


def profile(step, fns) -> None:
    from torch.profiler import profile as torch_profile  # noqa: PLC0415

    tabs = {}
    for k, f in fns.items():
        with torch_profile() as p:
            step(f)
        tabs[k] = {e.key: e.self_cpu_time_total / 1e3 for e in p.key_averages()}
    ops = sorted(set().union(*tabs.values()), key=lambda op: -max(t.get(op, 0) for t in tabs.values()))
    print("\n| op (self ms) | " + " | ".join(tabs) + " |\n| --- |" + " ---: |" * len(tabs))
    for op in ops[:15]:
        print(f"| {op} | " + " | ".join(f"{tabs[k].get(op, 0):.0f}" for k in tabs) + " |")
    print("| all ops | " + " | ".join(f"{sum(t.values()):.0f}" for t in tabs.values()) + " |")


if __name__ == "__main__":
    main()
