"""What each of ``callbacks.cpu_tuning``'s two settings is worth on this machine, at SmolLM2-135M's shapes.

    .venv/bin/python benchmarks/prepare.py --size smollm2   # once (run.py does it too)
    .venv/bin/python benchmarks/cpu_tuning.py [--repeats 3]

1. One attention layer at a decoding step (8 sequences, 9 heads over 3 KV heads, 192 keys) and in a training
   forward + backward (4 × 192 tokens), SDPA against matmul-softmax-matmul, fp32 and bf16.
2. Generation of 8 × 64 tokens after 128-token prompts under bf16 autocast (lit_rlhf's ``generate``), SDPA
   against eager attention, alternating.
3. A bf16 update step (forward, backward, clipping, fused AdamW) over 4 × 192 tokens, each in a fresh process
   with glibc's default thresholds and with ``keep_freed_memory()``, alternating; steady-state steps only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from ceiling import attention_shape, attention_times  # noqa: E402
from common import runs_dir  # noqa: E402

B, P, R = 8, 128, 64


def attention_layer(dtype: torch.dtype, train: bool) -> dict[str, float]:
    """µs of one layer, per kernel (``ceiling.attention_times`` at the 135M attention shapes)."""
    _, *heads = attention_shape("smollm2")
    b, q_len = (4, P + R) if train else (B, 1)
    t = attention_times(b, q_len, P + R, tuple(heads), train, dtype, reps=5 if train else 50)
    return {k: v * 1e6 for k, v in t.items()}


def generation(repeats: int) -> dict[str, list[float]]:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    from lit_rlhf.rollout.decoding import row_seeds  # noqa: PLC0415
    from lit_rlhf.rollout.rollout import generate, sampling_config  # noqa: PLC0415

    model = AutoModelForCausalLM.from_pretrained(runs_dir("smollm2") / "models" / "policy").eval()
    ids = torch.randint(3, model.config.vocab_size, (B, P), generator=torch.Generator().manual_seed(0))
    tok = type("Tok", (), {"pad_token_id": 0, "bos_token_id": None})
    cfg = sampling_config(tok, [2], R, 1.0)
    out: dict[str, list[float]] = {"sdpa": [], "eager": []}
    for i in range(repeats + 1):  # the first round warms both up
        for attn in ("sdpa", "eager") if i % 2 == 0 else ("eager", "sdpa"):
            model.set_attn_implementation(attn)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=True):
                generate(model, ids, torch.ones_like(ids), cfg, 0, seeds=row_seeds((0,), range(B)))
            torch.clear_autocast_cache()
            if i:
                out[attn].append(time.perf_counter() - t)
    return out


def update_steps(keep: bool, steps: int = 6) -> list[float]:
    """Seconds of steps 3… of a bf16 update loop in this process (``keep``: glibc keeps freed memory)."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    from lit_rlhf.callbacks.cpu_tuning import keep_freed_memory  # noqa: PLC0415
    from lit_rlhf.rollout.rollout import token_logprobs  # noqa: PLC0415

    if keep and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() needs glibc")
    model = AutoModelForCausalLM.from_pretrained(runs_dir("smollm2") / "models" / "policy")
    model.set_attn_implementation("eager")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(3, model.config.vocab_size, (4, P + R), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            loss = -token_logprobs(model, ids, torch.ones_like(ids), P, 1.0).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return times[2:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--update-child", choices=("keep", "default"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.update_child:
        print(json.dumps(update_steps(a.update_child == "keep")))
        return
    print("| one attention layer (µs) | SDPA | matmul-softmax-matmul |\n| --- | ---: | ---: |")
    for dtype in (torch.float32, torch.bfloat16):
        for train in (False, True):
            passes = [attention_layer(dtype, train) for _ in range(2)]  # best of two passes
            t = {k: min(p[k] for p in passes) for k in passes[0]}
            what = "forward + backward, 4 × 192 tokens" if train else "decoding step, 8 × 1 query, 192 keys"
            print(f"| {str(dtype)[6:]}, {what} | {t['sdpa']:.0f} | {t['eager']:.0f} |")
    gen = generation(a.repeats)
    print(f"\nbf16 generation of {B} × {R} tokens, s ({a.repeats} alternating runs each):")
    for k, v in gen.items():
        print(f"- {k}: {', '.join(f'{x:.2f}' for x in v)} (median {statistics.median(v):.2f})")
    runs: dict[str, list[float]] = {"default": [], "keep": []}
    for i in range(a.repeats):
        for mode in ("default", "keep") if i % 2 == 0 else ("keep", "default"):
            p = subprocess.run(
                [sys.executable, __file__, "--update-child", mode], capture_output=True, text=True, check=True
            )
            runs[mode] += json.loads(p.stdout.strip().splitlines()[-1])
    print(f"\nbf16 update step over 4 × {P + R} tokens, s (steps 3–8 of {a.repeats} processes each):")
    for k, v in runs.items():
        name = {"default": "glibc defaults", "keep": "keep_freed_memory()"}[k]
        print(f"- {name}: min {min(v):.2f}, median {statistics.median(v):.2f}, max {max(v):.2f}")


if __name__ == "__main__":
    main()
