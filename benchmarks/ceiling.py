"""The fastest any implementation could run each benchmark step on this machine: a lower bound on its time.

    .venv/bin/python benchmarks/run.py ...              # first: writes benchmarks/runs/<size>/ (prepare.py)
    .venv/bin/python benchmarks/ceiling.py --size smollm2

Equal work fixes the matmuls of a step: every Linear layer of the model (and the LM head where logits are
needed) over the step's rows — generation's prefill over the prompts and one row per sequence per decoded
token, the reference / critic / reward forwards over every position, and the update's forward + backward
(three matmuls per layer: y = xW, dx, dW) over each minibatch. This script times exactly those matmuls,
each shape at the row count the step gives it, on this machine's cores, and sums them: a step cannot take
less, whatever the framework, since attention, softmax, sampling, norms, the optimizer and any bookkeeping
only add to it. Attention is timed apart, at its own shapes, with the faster of PyTorch's two CPU kernels
(SDPA or matmul-softmax-matmul): the last two columns add it, a bound on what those kernels allow (a
faster attention kernel would lower it; the matmul-only bound holds whatever the kernel). The rollout's
extra policy log-prob forward is left out (an implementation may reuse the
sampling logits). Dividing a peer's measured step time by this bound gives the largest speed-up over it
that equal work allows.

The shared-prefix floor (the rows marked "shared prefix", left out with ``--no-shared``) counts each
group's prompt once: P rows per prompt and R per rollout instead of P + R per rollout, in generation's
prefill (what vLLM's prefix cache does; lit_rlhf's HF generation still prefills every row), in every
rollout forward and in the update, as ``task.module.shared_prefix`` does (lit_rlhf/rollout/shared_prefix.py).
The update's minibatches are random rows of the batch, so a minibatch of b of the N rollouts computes the
:func:`expected_prompts` distinct prompts it holds; with ``minibatch_by_group=true`` a minibatch is whole
groups, b / G prompts. Attention follows: the prompts attend among themselves
once, the responses over prompt and response keys.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from math import comb
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import MODELS, PRECISIONS, Settings, runs_dir  # noqa: E402
from group import GROUP_TASKS, group_plan  # noqa: E402
from run import matmul_peak  # noqa: E402


def layer_shapes(size: str) -> tuple[Counter, tuple[int, int]]:
    """(in, out) of every Linear of the transformer body with its count, and the LM head's (in, out)."""
    m = MODELS[size]
    if m["model_type"] == "gpt2":
        d, n = m["n_embd"], m["n_layer"]
        body = Counter({(d, 3 * d): n, (d, d): n, (d, 4 * d): n, (4 * d, d): n})
    elif m["model_type"] == "llama":
        d, f, n = m["hidden_size"], m["intermediate_size"], m["num_hidden_layers"]
        q, kv = m["num_attention_heads"] * m["head_dim"], m["num_key_value_heads"] * m["head_dim"]
        body = Counter()
        for shape in ((d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)):
            body[shape] += n
    else:
        raise ValueError(f"no layer shapes for model_type {m['model_type']!r}")
    vocab = (
        m.get("vocab_size")
        or json.loads((runs_dir(size) / "models/policy/config.json").read_text())["vocab_size"]
    )
    return body, (d, vocab)


def best_seconds(fn, reps: int) -> float:
    """Shortest of ``reps`` timed calls of ``fn`` after one warm-up call (a busy core only adds time)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_seconds(
    rows: int, shape: tuple[int, int], train: bool, dtype: torch.dtype, reps: int = 5
) -> float:
    """Best time of ``x @ W`` for ``x`` (rows, in), plus ``dx`` and ``dW`` when ``train``."""
    x, w = torch.randn(rows, shape[0], dtype=dtype), torch.randn(shape[0], shape[1], dtype=dtype)
    g = torch.randn(rows, shape[1], dtype=dtype)

    def once() -> None:
        torch.mm(x, w)
        if train:
            torch.mm(g, w.t())  # dx
            torch.mm(x.t(), g)  # dW

    return best_seconds(once, reps)


def attention_shape(size: str) -> tuple[int, int, int, int]:
    """(layers, query heads, key/value heads, head dim) of the model's attention."""
    m = MODELS[size]
    if m["model_type"] == "gpt2":
        return m["n_layer"], m["n_head"], m["n_head"], m["n_embd"] // m["n_head"]
    return m["num_hidden_layers"], m["num_attention_heads"], m["num_key_value_heads"], m["head_dim"]


def attention_kernels(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple:
    """PyTorch's two CPU attention kernels over (B, H, Q, D) queries and (B, KV, K, D) keys / values:
    SDPA (grouped-query natively) and matmul-softmax-matmul (keys repeated per group, fp32 softmax)."""
    h, kv, d, q_len, kv_len = q.shape[1], k.shape[1], q.shape[-1], q.shape[2], k.shape[2]

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=kv != h)

    def plain() -> torch.Tensor:
        kr, vr = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
        s = q @ kr.transpose(-1, -2) / d**0.5
        if causal:
            s = s.masked_fill(torch.ones(q_len, kv_len, dtype=torch.bool).triu(1), float("-inf"))
        return torch.softmax(s.float(), -1).to(q.dtype) @ vr

    return sdpa, plain


def attention_times(
    batch: int,
    q_len: int,
    kv_len: int,
    heads: tuple[int, int, int],
    train: bool,
    dtype: torch.dtype,
    reps: int = 3,
) -> dict[str, float]:
    """Best time of one attention layer (QKᵀ, causal softmax when ``q_len`` > 1, PV; + backward when
    ``train``) per kernel: ``{"eager": matmul-softmax-matmul, "sdpa": …}``."""
    h, kv, d = heads
    q = torch.randn(batch, h, q_len, d, dtype=dtype, requires_grad=train)
    k = torch.randn(batch, kv, kv_len, d, dtype=dtype, requires_grad=train)
    v = torch.randn(batch, kv, kv_len, d, dtype=dtype, requires_grad=train)
    sdpa, plain = attention_kernels(q, k, v, causal=q_len > 1)
    out = {}
    # plain first: in a process where SDPA ran first, the fp32 plain kernel at a decoding step was
    # measured 10x slower (1.8 ms against 0.17), a state that an earlier plain call avoids
    for name, fn in (("eager", plain), ("sdpa", sdpa)):

        def once(fn=fn) -> None:
            o = fn()
            if train:
                o.backward(torch.ones_like(o))

        with torch.set_grad_enabled(train):
            out[name] = best_seconds(once, reps)
    return out


def attention_seconds(
    batch: int, q_len: int, kv_len: int, heads: tuple[int, int, int], train: bool, dtype: torch.dtype
) -> float:
    """Best time of one attention layer with the faster of PyTorch's two CPU kernels at these shapes."""
    return min(attention_times(batch, q_len, kv_len, heads, train, dtype).values())


class Bound:
    """Sums the measured matmul time of the model's layers over the phases of one step."""

    def __init__(self, size: str, dtype: torch.dtype):
        self.size, (self.body, self.head) = size, layer_shapes(size)
        self.dtype, self.cache, self.phases, self.flops = dtype, {}, Counter(), 0.0
        self.attention: Counter = Counter()  # attention's own time by phase (not in ``phases``)

    def add_attention(
        self, phase: str, batch: int, q_len: int, kv_len: int, train: bool = False, times: int = 1
    ) -> None:
        """Attention of every layer over ``batch`` sequences, kept apart from the matmul-only bound."""
        layers, *heads = attention_shape(self.size)
        key = ("attention", batch, q_len, kv_len, train)
        if key not in self.cache:
            self.cache[key] = attention_seconds(batch, q_len, kv_len, tuple(heads), train, self.dtype)
        self.attention[phase] += times * layers * self.cache[key]

    def add(
        self, phase: str, rows: int, train: bool = False, head: bool = True, times: int = 1, body: bool = True
    ) -> None:
        shapes = Counter(self.body) if body else Counter()
        if head:
            shapes[self.head] += 1
        for shape, count in shapes.items():
            key = (rows, shape, train)
            if key not in self.cache:
                self.cache[key] = matmul_seconds(rows, shape, train, self.dtype)
            self.phases[phase] += times * count * self.cache[key]
            self.flops += times * count * 2 * rows * shape[0] * shape[1] * (3 if train else 1)


def adamw_step_seconds(weights: int, reps: int = 5) -> float:
    """Best time of one bare fused AdamW step (the shipped optimizer) over ``weights`` fp32 weights whose
    gradients are given: the optimizer's floor, as the matmuls' is a bare ``torch.mm``. (A streaming bound,
    28 bytes per weight at ``a += b``'s bandwidth, came out above what the kernel does on this machine.)"""
    p = torch.nn.Parameter(torch.zeros(weights))
    p.grad = torch.ones(weights)
    opt = torch.optim.AdamW([p], lr=1e-4, fused=True)
    return best_seconds(opt.step, reps)


def trained_weights(size: str, critic: bool = False) -> int:
    """Weights the update trains: the policy's (tied embeddings once), or a critic's (backbone + head)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: PLC0415

    m = dict(MODELS[size])
    m.setdefault("vocab_size", layer_shapes(size)[1][1])  # the prepared tokenizer's, if the size has none
    config = AutoConfig.for_model(m.pop("model_type"), **m)
    with torch.device("meta"):
        model = (AutoModel if critic else AutoModelForCausalLM).from_config(config)
    return sum(p.numel() for p in model.parameters()) + (config.hidden_size + 1 if critic else 0)


def optimizer_seconds(task: str, s: Settings, step=adamw_step_seconds) -> float:
    """The floor of one iteration's optimizer steps: every step of every trained model, each ``step(weights)``
    seconds (:func:`adamw_step_seconds` unless given)."""
    if task == "ppo":
        steps = s.ppo_epochs * s.ppo_minibatches
        return steps * (step(trained_weights(s.size)) + step(trained_weights(s.size, critic=True)))
    plan = group_plan(s, task)
    return plan.epochs * plan.minibatches * step(trained_weights(s.size))


def expected_prompts(prompts: int, group: int, rows: int) -> float:
    """Expected distinct prompts among ``rows`` rollouts drawn without replacement from ``prompts`` groups of
    ``group``: each prompt is missing with probability C(N − G, b) / C(N, b)."""
    n = prompts * group
    return prompts * (1 - comb(n - group, rows) / comb(n, rows))


def step_bound(task: str, s: Settings, shared: bool = False) -> Counter:
    """Lower bound (s) of one step of ``task`` under settings ``s``, by phase (:func:`step_bound_flops`)."""
    return step_bound_flops(task, s, shared)[0]


def step_bound_flops(task: str, s: Settings, shared: bool = False) -> tuple[Counter, float]:
    """Lower bound (s) of one step by phase, and the FLOPs of the matmuls it timed."""
    b = step_bounds(task, s, shared)
    return b.phases, b.flops


def step_bounds(task: str, s: Settings, shared: bool = False) -> Bound:
    """The step's matmul-only bound by phase (``phases``), and its attention time by phase (``attention``);
    ``shared``: each group's prompt computed once (the shared-prefix floor, see the module's doc)."""
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float32
    b = Bound(s.size, dtype)
    data = runs_dir(s.size) / "data"
    if task == "rm":  # one optimizer step: forward + backward over 2B padded sequences, a 1-output score head
        pairs = [json.loads(x) for x in (data / "pairs_ids.jsonl").read_text().splitlines()]
        steps = [pairs[i : i + s.rm_batch_pairs] for i in range(0, len(pairs), s.rm_batch_pairs)]
        rows = sorted(2 * len(p) * max(len(x) for r in p for x in r.values()) for p in steps)[len(steps) // 2]
        b.add("update", rows, train=True, head=False)
        return b
    prompt = json.loads((data / "prompts_meta.json").read_text())["prompt_tokens"]
    if task == "ppo":
        seqs, epochs, minibatches, critic = s.ppo_batch_prompts, s.ppo_epochs, s.ppo_minibatches, True
        group = s.ppo_samples_per_prompt  # rollouts per prompt (1: nothing to share)
    elif task in GROUP_TASKS:
        plan = group_plan(s, task)
        seqs, epochs, minibatches, critic = plan.rollouts, plan.epochs, plan.minibatches, False
        group = plan.group_size
    else:
        raise ValueError(f"unknown task {task!r}")
    length = prompt + s.ppo_max_new_tokens
    R, forwards, updates = (
        s.ppo_max_new_tokens,
        3 if critic else 2,
        epochs * minibatches * (2 if critic else 1),
    )
    mb = seqs // minibatches  # rollouts per minibatch
    # sequences whose prompt is computed: every rollout, or (shared) each distinct prompt once
    prefixes = seqs // group if shared else seqs
    by_group = shared and s.minibatch_by_group == "true" and mb % group == 0
    mb_prefixes = round(expected_prompts(seqs // group, group, mb)) if shared else mb
    if by_group:
        mb_prefixes = mb // group
    b.add("generation", prefixes * prompt, head=False)  # prefill over the prompts,
    b.add("generation", seqs, body=False)  # the logits of its last position (the first token),
    b.add("generation", seqs, times=R - 1)  # then one row per sequence per further token
    rows, mb_rows = prefixes * prompt + seqs * R, mb_prefixes * prompt + mb * R
    b.add("rollout forwards", rows)  # reference log-probs
    b.add("rollout forwards", rows, head=False, times=forwards - 1)  # reward (+ value)
    b.add("update", mb_rows, train=True, times=epochs * minibatches)
    if critic:
        b.add("update", mb_rows, train=True, head=False, times=epochs * minibatches)
    # attention: prefill, R − 1 decoding steps over P + 1 … P + R − 1 keys (cost linear in the keys: R − 1
    # times the middle step's),
    # the rollout forwards, and the update's forward + backward per minibatch (policy, and critic)
    b.add_attention("generation", prefixes, prompt, prompt)
    b.add_attention("generation", seqs, 1, prompt + R // 2, times=R - 1)
    if not shared:
        b.add_attention("rollout forwards", seqs, length, length, times=forwards)
        b.add_attention("update", mb, length, length, train=True, times=updates)
        return b
    # shared: the prompts among themselves once, the responses over prompt and response keys
    b.add_attention("rollout forwards", prefixes, prompt, prompt, times=forwards)
    b.add_attention("rollout forwards", seqs, R, length, times=forwards)
    b.add_attention("update", mb_prefixes, prompt, prompt, train=True, times=updates)
    b.add_attention("update", mb, R, length, train=True, times=updates)
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="toy", choices=sorted(MODELS))
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS)
    ap.add_argument("--tasks", default="rm,ppo,grpo,rloo")
    ap.add_argument(
        "--no-shared", action="store_true", help="leave out the shared-prefix floor rows (lit_rlhf's sharing)"
    )
    a = ap.parse_args()
    s = Settings.load(a.size, a.precision)
    torch.set_num_threads(s.threads)
    peak = matmul_peak(sys.executable, s.threads, s.precision)  # the driver's own measurement
    print(f"{a.precision} matmul peak (torch.mm 4096², {s.threads} threads, best of 5): {peak:.1f} GFLOP/s\n")
    print(
        f"| task ({a.size}, {a.precision}) | lower bound s / step | generation | rollout forwards | update "
        "| most units/s equal work allows | the bound's matmul rate, share of peak "
        "| + attention, fastest kernel (s) | most units/s with attention |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = [(t, False) for t in a.tasks.split(",")]
    if not a.no_shared:  # beside GRPO's and RLOO's equal-work rows, their shared-prefix floor
        rows = [r for t, _ in rows for r in [(t, False)] + ([(t, True)] if t in GROUP_TASKS else [])]
    for task, shared in rows:
        b = step_bounds(task, s, shared)
        ph, flops = b.phases, b.flops
        units = {"rm": (s.rm_batch_pairs, "pairs/s"), "ppo": (s.ppo_batch_prompts, "rollouts/s")}.get(task)
        if units is None:
            units = (group_plan(s, task).rollouts, "rollouts/s")
        cells = " | ".join(f"{ph.get(k, 0.0):.3f}" for k in ("generation", "rollout forwards", "update"))
        total, attention = sum(ph.values()), sum(b.attention.values())
        rate = flops / total / 1e9
        with_attention = f"{units[0] / (total + attention):.2f} {units[1]}" if attention else "–"
        name = f"{task}, shared prefix" if shared else task
        print(
            f"| {name} | {total:.3f} | {cells} | {units[0] / total:.2f} {units[1]} "
            f"| {rate:.0f} GFLOP/s, {rate / peak:.0%} | {attention:.3f} | {with_attention} |"
        )


if __name__ == "__main__":
    main()
