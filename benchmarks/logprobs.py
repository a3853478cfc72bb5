"""Token log-probs from the LM head's logits: lit_rlhf's chunked selective log-softmax against autograd's
``log_softmax`` over an fp32 copy (the release before's, and what most trainers write), alternating.

    .venv/bin/python benchmarks/logprobs.py [--vocab 49152] [--repeats 7]

Shapes: the logits one grouped forward keeps at the benchmark's shapes (prompt 128, responses 64): 1 + G·63
packed columns per group for G ∈ {4, 8}, and a plain minibatch of 8 rows × 64; bf16 logits (bf16-mixed) and
fp32. Each row of the table: forward + backward, and forward alone (the rollout's no-grad forwards), medians
of ``--repeats`` alternating timings after one warm-up; the same values are checked first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lit_rlhf.rlhf.logprobs import logprobs_from_logits  # noqa: E402


def autograd(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The release before's: an fp32 copy, divided by the temperature, a logsumexp per row."""
    x = logits.float()
    x = x / temperature if temperature != 1.0 else x
    picked = x.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.stack([torch.logsumexp(row, dim=-1) for row in x])


def timed(fn, logits: torch.Tensor, labels: torch.Tensor, backward: bool) -> float:
    x = logits.detach().requires_grad_(backward)
    t = time.perf_counter()
    with torch.set_grad_enabled(backward):
        out = fn(x, labels, 0.7)
        if backward:
            out.sum().backward()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--page-faults", action="store_true", help="without keep_freed_memory (glibc's defaults)")
    args = ap.parse_args()
    from lit_rlhf.callbacks.cpu_tuning import keep_freed_memory  # noqa: PLC0415

    if not args.page_faults:
        keep_freed_memory()  # as training runs (CPUTuning): freed blocks reused, no page faults
    torch.set_num_threads(2)
    V, gen = args.vocab, torch.Generator().manual_seed(0)
    shapes = {"grouped G = 4": (1, 1 + 4 * 63), "grouped G = 8": (1, 1 + 8 * 63), "plain 8 × 64": (8, 64)}
    fns = {"autograd": autograd, "chunked": logprobs_from_logits}
    print(f"V = {V}, temperature 0.7, medians of {args.repeats} alternating timings (ms)\n")
    print("| logits | dtype | pass | autograd | chunked | speed-up |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for name, (B, T) in shapes.items():
        for dtype in (torch.bfloat16, torch.float32):
            logits = (torch.randn(B, T, V, generator=gen) * 3).to(dtype)
            labels = torch.randint(0, V, (B, T), generator=gen)
            gap = (autograd(logits, labels, 0.7) - logprobs_from_logits(logits, labels, 0.7)).abs().max()
            assert gap < 1e-4, f"values differ by {gap}"
            for backward in (True, False):
                times: dict[str, list[float]] = {k: [] for k in fns}
                for f in fns.values():
                    timed(f, logits, labels, backward)  # warm-up
                for i in range(args.repeats):
                    for k in list(fns)[:: 1 if i % 2 == 0 else -1]:
                        times[k].append(timed(fns[k], logits, labels, backward))
                a, c = (statistics.median(times[k]) * 1e3 for k in fns)
                kind = "forward + backward" if backward else "forward"
                print(f"| {name} | {str(dtype)[6:]} | {kind} | {a:.1f} | {c:.1f} | {a / c:.2f}x |")


if __name__ == "__main__":
    main()
