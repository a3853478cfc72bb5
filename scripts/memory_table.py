"""Per-GPU memory of a PPO step (actor, critic, reference, reward model) from model shapes alone.

    python scripts/memory_table.py [--gpus 8] [--seq 1024] [--micro-batch 4] [--lora-rank 16]

Counts model states (ZeRO paper accounting, Rajbhandari et al., 2020) and activations (Korthikanti et al.,
2022) for policies of 125M (GPT-2 small), 1.1B (TinyLlama) and 6.7B (LLaMA-2-7B) parameters, under DDP,
ZeRO-2 and FSDP full shard / ZeRO-3 over N GPUs, full fine-tuning or LoRA, fp32 AdamW or 8-bit AdamW.
Nothing is downloaded: the shapes are written below. Estimates, not measurements: allocator slack, CUDA
context (~0.5–1 GiB), communication buffers and the all-gathered FSDP unit come on top.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["ddp", "zero2", "fsdp"]
GiB = 2**30


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's shape.

    Attributes:
        name: label in the table.
        n_layer: transformer blocks L.
        d_model: hidden size h.
        n_head: attention heads a.
        d_ff: MLP inner size.
        vocab: vocabulary size V.
        n_kv_head: key/value heads (grouped-query attention); ``None`` = ``n_head``.
        n_positions: learned position embeddings (GPT-2); 0 = rotary (LLaMA).
        gated_mlp: SwiGLU MLP (3 matrices, LLaMA) instead of 2 (GPT-2).
        bias: linear layers and norms have biases (GPT-2 LayerNorm) or not (LLaMA RMSNorm).
        tied: the LM head shares the token embedding.
    """

    name: str
    n_layer: int
    d_model: int
    n_head: int
    d_ff: int
    vocab: int
    n_kv_head: int | None = None
    n_positions: int = 0
    gated_mlp: bool = False
    bias: bool = False
    tied: bool = False

    @property
    def d_kv(self) -> int:
        """Width of the key (= value) projection: n_kv_head · head_dim."""
        return (self.n_kv_head or self.n_head) * (self.d_model // self.n_head)

    def attn_matrices(self) -> list[tuple[int, int]]:
        """(d_in, d_out) of each attention projection — the matrices LoRA adapts here."""
        h = self.d_model
        if self.bias:  # GPT-2's fused c_attn (q, k, v) and c_proj
            return [(h, h + 2 * self.d_kv), (h, h)]
        return [(h, h), (h, self.d_kv), (h, self.d_kv), (h, h)]  # q, k, v, o


GPT2_125M = Shape("125M (GPT-2)", 12, 768, 12, 3072, 50257, n_positions=1024, bias=True, tied=True)
LLAMA_1B = Shape("1.1B (TinyLlama)", 22, 2048, 32, 5632, 32000, n_kv_head=4, gated_mlp=True)
LLAMA_7B = Shape("6.7B (LLaMA-2-7B)", 32, 4096, 32, 11008, 32000, gated_mlp=True)
SHAPES = (GPT2_125M, LLAMA_1B, LLAMA_7B)


# ------------------------------------------------------------------ parameters
def block_params(s: Shape) -> int:
    """One block: attention + MLP + 2 norms (weights, and biases if ``s.bias``)."""
    attn = sum(i * o + (o if s.bias else 0) for i, o in s.attn_matrices())
    mlp_mats = [(s.d_model, s.d_ff)] * (2 if s.gated_mlp else 1) + [(s.d_ff, s.d_model)]  # (gate,) up, down
    mlp = sum(i * o + (o if s.bias else 0) for i, o in mlp_mats)
    norms = 2 * s.d_model * (2 if s.bias else 1)
    return attn + mlp + norms


def backbone_params(s: Shape) -> int:
    """Embeddings + blocks + final norm (everything but the output head)."""
    embed = s.vocab * s.d_model + s.n_positions * s.d_model
    return embed + s.n_layer * block_params(s) + s.d_model * (2 if s.bias else 1)


def param_count(s: Shape) -> int:
    """The causal LM (policy / reference): backbone + LM head (0 extra if tied)."""
    return backbone_params(s) + (0 if s.tied else s.vocab * s.d_model)


def scalar_head_params(s: Shape) -> int:
    """Critic / reward model: backbone + a linear h → 1 head."""
    return backbone_params(s) + s.d_model


def lora_params(s: Shape, rank: int) -> int:
    """LoRA on every attention projection: r·(d_in + d_out) per adapted matrix (A: r×d_in, B: d_out×r)."""
    return s.n_layer * sum(rank * (i + o) for i, o in s.attn_matrices())


# ------------------------------------------------------------------ activations
def activation_bytes(s: Shape, seq: int, batch: int, checkpointing: bool) -> int:
    """Activations one trained model keeps for backward, in 16-bit (Korthikanti et al., 2022, eq. 1).

    Per layer: s·b·h·(34 + 5·a·s/h) bytes without recomputation; with full activation checkpointing only
    each block's input, 2·s·b·h bytes (plus one block's worth recomputed at a time).
    """
    h = s.d_model
    if checkpointing:
        return s.n_layer * 2 * seq * batch * h + seq * batch * h * (34 + 5 * s.n_head * seq // h)
    return s.n_layer * seq * batch * h * (34 + 5 * s.n_head * seq // h)


def logits_bytes(s: Shape, seq: int, batch: int) -> int:
    """fp32 logits of the LM for log-probs: s·b·V·4 (often the largest single tensor of a small model)."""
    return seq * batch * s.vocab * 4


def kv_cache_bytes(s: Shape, seq: int, batch: int) -> int:
    """Rollout KV cache in bf16: 2 (k, v) · L · s · b · d_kv · 2 bytes."""
    return 2 * s.n_layer * seq * batch * s.d_kv * 2


# ------------------------------------------------------------------ model states
WEIGHT = 2  # bf16 working weights
GRAD = 2  # bf16 gradients
MASTER = 4  # fp32 master weights (mixed precision)
ADAM = {"adamw": 8, "adamw8bit": 2}  # fp32 m and v / 8-bit m and v (block-wise absmax: ~0.3 % more)


def shard(nbytes: float, n_gpus: int, sharded: bool) -> float:
    return nbytes / n_gpus if sharded else nbytes


def memory(
    s: Shape,
    strategy: Strategy,
    n_gpus: int,
    optimizer: str = "adamw",
    lora_rank: int | None = None,
    seq: int = 1024,
    batch: int = 4,
    frozen_bytes: int = WEIGHT,
) -> dict[str, float]:
    """Bytes per GPU of one PPO step, by component.

    Trained: actor (causal LM) and critic (scalar head), each ``WEIGHT`` + ``GRAD`` + ``MASTER`` +
    ``ADAM[optimizer]`` bytes per trained parameter. Frozen: reference (causal LM) and reward model,
    ``frozen_bytes`` per parameter. DDP replicates everything; ZeRO-2 shards gradients and optimizer
    states (master included); FSDP full shard / ZeRO-3 shards weights too, frozen models included.
    With LoRA (rank r) the bases are frozen, only adapters (and the critic's head) train, and the
    reference is the actor's base with adapters disabled: no second copy.
    """
    if strategy not in ("ddp", "zero2", "fsdp"):
        raise ValueError(f"strategy must be ddp, zero2 or fsdp, got {strategy!r}")
    shard_w = strategy == "fsdp"
    shard_states = strategy in ("zero2", "fsdp")
    lm, head = param_count(s), scalar_head_params(s)
    if lora_rank is None:
        trained = lm + head
        weights = {"actor": lm * WEIGHT, "critic": head * WEIGHT, "reference": lm * frozen_bytes}
    else:
        trained = 2 * lora_params(s, lora_rank) + s.d_model  # actor and critic adapters, value head
        adapters = lora_params(s, lora_rank) * WEIGHT
        weights = {
            "actor": lm * frozen_bytes + adapters,
            "critic": head * frozen_bytes + adapters,
            "reference": 0,  # = actor base with adapters disabled
        }
    weights["reward"] = head * frozen_bytes
    out = {k: shard(v, n_gpus, shard_w) for k, v in weights.items()}
    out["grads"] = shard(trained * GRAD, n_gpus, shard_states)
    out["optimizer"] = shard(trained * (MASTER + ADAM[optimizer]), n_gpus, shard_states)
    out["activations"] = activation_bytes(s, seq, batch, checkpointing=False)
    out["activations_ckpt"] = activation_bytes(s, seq, batch, checkpointing=True)
    out["logits"] = logits_bytes(s, seq, batch)
    out["kv_cache"] = kv_cache_bytes(s, seq, batch)
    states = sum(out[k] for k in ("actor", "critic", "reference", "reward", "grads", "optimizer"))
    # the PPO step trains actor then critic: activations of one model at a time; rollout KV cache is freed
    out["total"] = states + max(out["activations"] + out["logits"], out["kv_cache"])
    out["total_ckpt"] = states + max(out["activations_ckpt"] + out["logits"], out["kv_cache"])
    return out


# ------------------------------------------------------------------ report
COLUMNS = ["actor", "critic", "reference", "reward", "grads", "optimizer", "activations", "activations_ckpt"]
COLUMNS += ["logits", "kv_cache", "total", "total_ckpt"]
FORMULAS = """\
Formulas (Ψ = parameters, N = GPUs, s = sequence, b = micro-batch, h = hidden, a = heads, L = layers):
- GPT-2 params: V·h + P·h + L·(12h² + 13h) + 2h (LM head tied)
- LLaMA params: 2·V·h + L·(2h² + 2h·d_kv + 3h·d_ff + 2h) + h (untied)
- trained model: 2Ψ bf16 weights + 2Ψ bf16 grads + 4Ψ fp32 master + 8Ψ AdamW (m, v) = 16Ψ;
  8-bit AdamW: 2Ψ for (m, v) → 10Ψ
- frozen model (reference, reward): 2Ψ in bf16 (4Ψ in fp32: --frozen-dtype fp32)
- DDP: all of it on every GPU; ZeRO-2: grads + master + optimizer / N;
  FSDP full shard = ZeRO-3: everything / N
- LoRA rank r: trainable r·(d_in + d_out) per adapted matrix (here every attention projection);
  the reference is the actor's base with adapters disabled (0 bytes); critic = own frozen base + adapters
- activations per trained model (Korthikanti et al. 2022): L·s·b·h·(34 + 5·a·s/h) bytes without
  recomputation; with activation checkpointing L·2·s·b·h + one block's s·b·h·(34 + 5·a·s/h)
- logits s·b·V·4 (fp32 log-probs); rollout KV cache 2·L·s·b·d_kv·2 (bf16), freed before the update
- total = model states + max(activations + logits, KV cache); not counted: CUDA context, allocator
  fragmentation, communication buckets, FSDP's all-gathered unit (2 × one block in bf16)
"""


def table(n_gpus: int, seq: int, batch: int, lora_rank: int, frozen_bytes: int) -> str:
    lines = []
    for s in SHAPES:
        lines += [
            f"### {s.name}: {param_count(s) / 1e9:.3f}B policy params, {n_gpus} GPUs, "
            f"s={seq}, b={batch} per GPU (GiB per GPU)",
            "",
            "| strategy | tuning | optimizer | " + " | ".join(COLUMNS) + " |",
            "|" + "---|" * (len(COLUMNS) + 3),
        ]
        for strategy, label in (("ddp", "DDP"), ("zero2", "ZeRO-2"), ("fsdp", "FSDP / ZeRO-3")):
            for rank in (None, lora_rank):
                for opt in ("adamw", "adamw8bit"):
                    m = memory(s, strategy, n_gpus, opt, rank, seq, batch, frozen_bytes)
                    tuning = "full" if rank is None else f"LoRA r={rank}"
                    cells = " | ".join(f"{m[c] / GiB:.2f}" for c in COLUMNS)
                    lines.append(f"| {label} | {tuning} | {opt} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024, help="prompt + response tokens")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per GPU per forward")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--frozen-dtype", choices=["bf16", "fp32"], default="bf16")
    a = p.parse_args()
    frozen = 2 if a.frozen_dtype == "bf16" else 4
    print(table(a.gpus, a.seq, a.micro_batch, a.lora_rank, frozen))
    print(FORMULAS)


if __name__ == "__main__":
    main()
