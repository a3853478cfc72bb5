"""Helpers shared by the benchmark driver and both sides (stdlib + torch only: the peers' venvs import it).

Every side prints exactly one line ``RESULT {json}`` on stdout; :func:`emit` writes it.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


def runs_dir(size: str) -> Path:
    """Where ``prepare.py`` writes a size's settings, models and data: ``benchmarks/runs/<size>``."""
    return HERE / "runs" / size


@dataclass(frozen=True)
class Settings:
    """The one set of settings both sides run with (``prepare.py`` writes ``runs/<size>/settings.json``).

    The model's shapes are in :data:`MODELS` under the same ``size``.
    """

    size: str = "toy"
    # "world": the embedded world's tokenizer, prompts and preference pairs; "synthetic": a word-level
    # tokenizer of the model's vocabulary size and random-word prompts/responses of fixed token lengths
    data: str = "world"
    seed: int = 0
    threads: int = 2
    prompt_tokens: int | None = None  # every prompt's length; None = the world's most common one
    # reward model
    rm_batch_pairs: int = 32
    rm_max_prompt_tokens: int = 32
    rm_max_length: int = 64  # synthetic responses fill up to this (prompt + response + eos)
    rm_warmup_steps: int = 3
    rm_steps: int = 30  # timed steps (after the warm-up)
    lr: float = 1e-4
    # PPO
    ppo_batch_prompts: int = 16
    ppo_max_new_tokens: int = 24
    ppo_epochs: int = 2
    ppo_minibatches: int = 2
    ppo_warmup_steps: int = 2
    ppo_steps: int = 8  # timed PPO iterations (after the warm-up)
    temperature: float = 1.0
    kl_coef: float = 0.05

    @classmethod
    def load(cls, size: str) -> Settings:
        return cls(**json.loads((runs_dir(size) / "settings.json").read_text()))

    def dump(self) -> None:
        runs_dir(self.size).mkdir(parents=True, exist_ok=True)
        (runs_dir(self.size) / "settings.json").write_text(json.dumps(asdict(self), indent=1))


# Each size: the model (``AutoConfig.for_model`` keywords; vocab_size absent = the tokenizer's) and settings.
MODELS: dict[str, dict] = {
    # GPT-2 from one config on the embedded world's word-level tokenizer: seconds per run
    "toy": {
        "model_type": "gpt2",
        "n_layer": 4,
        "n_embd": 256,
        "n_head": 4,
        "n_positions": 128,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    },
    # SmolLM2-135M's shapes (its GGUF's LlamaConfig; tests/test_benchmarks.py compares), random weights
    "smollm2": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "hidden_act": "silu",
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "attention_bias": False,
        "mlp_bias": False,
    },
}
SIZES: dict[str, Settings] = {
    "toy": Settings(),
    # a chat model's lengths (128-token prompts, 64-token responses), batches small enough for 2 cores
    "smollm2": Settings(
        size="smollm2",
        data="synthetic",
        prompt_tokens=128,
        rm_batch_pairs=4,
        rm_max_prompt_tokens=128,
        rm_max_length=192,
        rm_warmup_steps=1,
        rm_steps=4,
        ppo_batch_prompts=4,
        ppo_max_new_tokens=64,
        ppo_warmup_steps=1,
        ppo_steps=2,
    ),
}


@dataclass
class StepClock:
    """Wall-clock stamps at the end of every step; throughput is taken after the warm-up steps."""

    stamps: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # process CPU seconds (all threads) at each stamp

    def tick(self) -> None:
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def timed_cpu_seconds(self, warmup: int) -> float:
        """CPU seconds this process used over the timed steps (less sensitive to load than wall time)."""
        return self.cpu[-1] - self.cpu[warmup - 1]

    def timed_seconds(self, warmup: int) -> float:
        """Seconds from the end of step ``warmup`` to the end of the last step."""
        if warmup < 1 or len(self.stamps) <= warmup:
            raise RuntimeError(f"need warmup >= 1 and more than {warmup} steps, got {len(self.stamps)}")
        return self.stamps[-1] - self.stamps[warmup - 1]


def step_seconds(stamps: list[float], warmup: int) -> list[float]:
    """Duration of each timed step (end-to-end stamps after the warm-up)."""
    return [b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:])]


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: everything but the embedding tables, plus the head.

    Embedding lookups cost no FLOPs; a head tied to the input embedding (GPT-2, SmolLM2) still does its
    matmul, so it counts once. Works for any architecture (GPT-2's ``Conv1D`` blocks, Llama's ``Linear``).
    """
    import torch  # noqa: PLC0415

    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if id(p) not in tables)  # parameters() dedups tied ones
    for head in ("lm_head", "score", "classifier"):
        mod = getattr(model, head, None)
        if mod is not None and id(mod.weight) in tables:
            n += mod.weight.numel()
    return n


def train_flops(params: int, tokens: int) -> float:
    """≈ 6·N·D for a forward and backward pass (Kaplan et al., 2020)."""
    return 6.0 * params * tokens


def fwd_flops(params: int, tokens: int) -> float:
    """≈ 2·N·D for a forward pass."""
    return 2.0 * params * tokens


def ppo_step_flops(n_lm: int, n_cls: int, batch: int, prompt_len: int, resp_len: int, epochs: int) -> dict:
    """Algorithmic FLOPs of one PPO iteration, the same count for both sides.

    Generation (prefill + one token at a time with a KV cache) and the reference, value and reward forwards
    are forward-only; the update is ``epochs`` passes of forward+backward of policy and critic over the batch.
    Recomputing the policy's log-probs after generation (lit_rlhf does, TRL takes them from the sampling
    logits) is not counted: it is work a faster implementation can avoid.
    """
    seq = batch * (prompt_len + resp_len)
    out = {
        "generation": fwd_flops(n_lm, seq),
        "ref": fwd_flops(n_lm, seq),
        "value": fwd_flops(n_cls, seq),
        "reward": fwd_flops(n_cls, seq),
        "update": epochs * train_flops(n_lm + n_cls, seq),
    }
    out["total"] = sum(out.values())
    return out


def emit(result: dict) -> None:
    """Print the side's one result line (the driver parses it)."""
    result.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    result.setdefault("loadavg_1min_end", os.getloadavg()[0])
    import torch  # noqa: PLC0415

    result.setdefault("torch_threads_end", torch.get_num_threads())
    print("RESULT " + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError("side printed no RESULT line")
    return json.loads(lines[-1][len("RESULT ") :])


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def check_equal(lit: dict, peer: dict, exact: tuple[str, ...], approx: dict[str, float]) -> list[str]:
    """Compare the work both sides report; return human-readable mismatches (empty = equal settings).

    Args:
        lit, peer: the ``work`` dicts of both sides.
        exact: keys that must be equal.
        approx: key → allowed relative difference (sampled quantities, e.g. response tokens up to EOS).
    """
    bad = []
    for k in exact:
        if lit.get(k) != peer.get(k):
            bad.append(f"{k}: lit={lit.get(k)} peer={peer.get(k)}")
    for k, tol in approx.items():
        a, b = lit.get(k), peer.get(k)
        if a is None or b is None or abs(a - b) > tol * max(abs(a), abs(b), 1):
            bad.append(f"{k}: lit={a} peer={b} (tolerance {tol:.0%})")
    return bad


# what must match: reward model batches are identical (same pairs, same order); PPO responses are sampled,
# so tokens up to EOS may differ slightly between the two samplers
EXACT = {
    "rm": ("optimizer_steps", "pairs", "sequences", "tokens", "padded_positions"),
    "ppo": ("ppo_iterations", "minibatch_updates", "rollouts", "prompt_tokens", "generated_positions"),
}
APPROX = {"rm": {}, "ppo": {"response_tokens": 0.15, "tokens": 0.15}}


class UnequalWork(RuntimeError):
    """The two sides did not do the work the settings ask for, or not the same work."""


def rm_expected_work(s: Settings, pairs: list[dict]) -> dict:
    """The reward-model work the settings ask for, counted from the tokenised pairs in loader order.

    Each batch of ``rm_batch_pairs`` pairs is one (2B, T) tensor: chosen rows then rejected rows, padded to
    the longest of them.

    Args:
        s: the settings.
        pairs: ``{"chosen_ids", "rejected_ids"}`` rows in the order the loader yields them.
    """
    steps, B = s.rm_warmup_steps + s.rm_steps, s.rm_batch_pairs
    if len(pairs) < steps * B:
        raise UnequalWork(f"{len(pairs)} pairs cannot fill {steps} batches of {B}")
    tokens = positions = 0
    for i in range(steps):
        rows = [r[k] for r in pairs[i * B : (i + 1) * B] for k in ("chosen_ids", "rejected_ids")]
        tokens += sum(map(len, rows))
        positions += len(rows) * max(map(len, rows))
    return {
        "optimizer_steps": steps,
        "pairs": steps * B,
        "sequences": 2 * steps * B,
        "tokens": tokens,
        "padded_positions": positions,
    }


def ppo_expected_work(s: Settings, prompt_tokens: int) -> dict:
    """The PPO work the settings ask for: iterations × (epochs × minibatches) updates, B rollouts each.

    Every prompt has ``prompt_tokens`` tokens (no padding) and every rollout ``ppo_max_new_tokens``
    generated positions (responses that stop early are padded to that length).
    """
    iters, B = s.ppo_warmup_steps + s.ppo_steps, s.ppo_batch_prompts
    return {
        "ppo_iterations": iters,
        "minibatch_updates": iters * s.ppo_epochs * s.ppo_minibatches,
        "rollouts": iters * B,
        "prompt_tokens": iters * B * prompt_tokens,
        "generated_positions": iters * B * s.ppo_max_new_tokens,
    }


def verify_work(task: str, lit: dict, peer: dict, expected: dict) -> None:
    """Raise :class:`UnequalWork` unless both sides did exactly the expected work (sampled counts: nearly).

    Args:
        task: ``"rm"`` or ``"ppo"``.
        lit, peer: the ``work`` dicts both sides report.
        expected: :func:`rm_expected_work` or :func:`ppo_expected_work` of the run's settings.
    """
    bad = check_equal(lit, peer, EXACT[task], APPROX[task])
    for side, work in (("lit", lit), ("peer", peer)):
        bad += [f"{side} {k}: {work.get(k)} != expected {v}" for k, v in expected.items() if work.get(k) != v]
    if bad:
        raise UnequalWork(f"{task}: the two sides did not do the same work: " + "; ".join(bad))


def check_versions(lit: dict, peer: dict, keys: tuple[str, ...] = ("torch", "transformers")) -> None:
    """Raise unless both sides ran the same torch and transformers (else they ran different model code)."""
    bad = [f"{k}: lit {lit.get(k)} peer {peer.get(k)}" for k in keys if lit.get(k) != peer.get(k)]
    if bad:
        raise UnequalWork(
            "the sides ran different library versions ("
            + ", ".join(bad)
            + "); rebuild the peers with `bash benchmarks/setup_peers.sh <lit_rlhf's python>`"
        )


def setup_threads(n: int) -> None:
    import torch  # noqa: PLC0415

    torch.set_num_threads(n)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def ppo_result(
    side: str,
    s,
    meter,
    seconds: float,
    fl: dict,
    step_total: float,
    update_s: float,
    breakdown: dict,
    work: dict,
    steps: tuple[int, int],
) -> dict:
    """The result record both PPO sides print (same fields, so the driver can compare them)."""
    return {
        "side": side,
        "task": "ppo",
        "seconds": seconds,
        "cpu_seconds": meter.clock.timed_cpu_seconds(s.ppo_warmup_steps),
        "throughput": s.ppo_steps * s.ppo_batch_prompts / seconds,
        "step_s": step_seconds(meter.clock.stamps, s.ppo_warmup_steps),
        "per_step": s.ppo_batch_prompts,
        "unit": "rollouts/s",
        "flops_per_s": fl["total"] / step_total,
        "update_flops_per_s": fl["update"] / update_s,
        "breakdown_s": breakdown,
        "work": {
            "ppo_iterations": len(meter.clock.stamps),
            "minibatch_updates": steps[0],
            "critic_steps": steps[1],
            **work,
            "tokens": work["prompt_tokens"] + work["response_tokens"],
        },
    }
