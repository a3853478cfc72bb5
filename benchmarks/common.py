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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent


def trl_precision(s: Settings) -> dict:
    """TrainingArguments keywords for ``s.precision``: ``bf16`` set either way (its default is bf16 where
    the machine has it, which would make the fp32 comparison unequal)."""
    return {"bf16": s.precision == "bf16", "fp16": False}


def lit_precision(s: Settings) -> str:
    """Lightning's ``Trainer(precision=…)`` for ``s.precision``."""
    return "bf16-mixed" if s.precision == "bf16" else "32-true"


def runs_dir(size: str) -> Path:
    """Where ``prepare.py`` writes a size's settings, models and data: ``benchmarks/runs/<size>``."""
    return HERE / "runs" / size


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Settings:
    """The one set of settings both sides run with (``prepare.py`` writes ``runs/<size>/settings.json``).

    The model's shapes are in :data:`MODELS` under the same ``size``.
    """

    size: str = "toy"
    # "fp32", or "bf16": lit_rlhf's Trainer(precision="bf16-mixed") and TRL's bf16=True (fp32 weights and
    # optimizer state, bf16 autocast) — chosen by ``run.py --precision``, not written by prepare.py
    precision: str = "fp32"
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
    # GRPO and RLOO (critic-free): prompts × group_size rollouts per iteration, ppo_max_new_tokens each;
    # epochs and minibatches as conf/task/grpo.yaml and rloo.yaml (tests/test_benchmarks.py compares)
    group_batch_prompts: int = 8
    group_size: int = 4
    grpo_epochs: int = 1
    rloo_epochs: int = 2
    group_minibatches: int = 2
    group_warmup_steps: int = 2
    group_steps: int = 8  # timed iterations (after the warm-up)
    # lit_rlhf's task.module.shared_prefix (auto | true | false): each distinct prompt computed once for its
    # group in the rollout forwards and the update (lit_rlhf/rollout/shared_prefix.py). false (here, not the
    # shipped auto) keeps the FLOPs equal to the peer's; --set shared_prefix=true measures the sharing
    shared_prefix: str = "false"
    # lit_rlhf's task.module.minibatch_by_group (true | false): the update's minibatches cut from whole groups
    minibatch_by_group: str = "false"
    # lit_rlhf's task.module.old_logprobs_from_update (true | false): π_old of each iteration's first
    # minibatch from the update's own forward. false (here, not the shipped true) keeps the forwards equal to
    # the peer's, which computes π_old of every row in this plan; --set old_logprobs_from_update=true
    old_logprobs_from_update: str = "false"
    # how lit_rlhf computes token log-probs: chunked (lit_rlhf.rlhf.logprobs, shipped) | autograd (the release
    # before's: log_softmax over an fp32 copy of the logits, autograd's backward; lit_side.py patches it in)
    logprobs: str = "chunked"
    # the vLLM engine's enforce_eager (generation=vllm): true (eager, the CPU default) | false (compiled)
    vllm_enforce_eager: str = "true"
    # lit_rlhf's PPO samples per prompt (ab.py; TRL's PPO samples one, run.py refuses another value): the
    # ppo_batch_prompts rollouts of an iteration are ppo_batch_prompts / this prompts × this samples each
    ppo_samples_per_prompt: int = 1

    @classmethod
    def load(cls, size: str, precision: str | None = None) -> Settings:
        """``runs/<size>/settings.json`` (written by prepare.py), with ``precision`` if given."""
        s = cls(**json.loads((runs_dir(size) / "settings.json").read_text()))
        if precision is None:
            return s
        if precision not in PRECISIONS:
            raise SystemExit(f"precision must be one of {PRECISIONS}, got {precision!r}")
        return replace(s, precision=precision)

    @classmethod
    def from_argv(cls, argv: list[str]) -> tuple[str, Settings]:
        """A side's ``TASK SIZE [PRECISION]`` arguments → (task, settings)."""
        task, size, *rest = argv
        return task, cls.load(size, rest[0] if rest else None)

    def override(self, assignments: list[str]) -> Settings:
        """These settings with ``KEY=VALUE`` assignments (``run.py --set``), each value parsed as the
        field's type; an unknown key or a value of the wrong type is refused, naming the key."""
        fields = asdict(self)
        changes = {}
        for item in assignments:
            key, sep, value = item.partition("=")
            if not sep or key not in fields:
                known = ", ".join(k for k in fields if k not in ("size", "precision"))
                raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of {known}")
            kind = type(fields[key]) if fields[key] is not None else int  # prompt_tokens: int or None
            try:
                changes[key] = None if value == "none" and fields[key] is None else kind(value)
            except ValueError:
                raise SystemExit(f"--set {key}={value!r}: expected a {kind.__name__}") from None
        if {"size", "precision"} & set(changes):
            raise SystemExit("--set: choose size and precision with --size and --precision")
        return replace(self, **changes)

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
        group_batch_prompts=2,
        group_warmup_steps=1,
        group_steps=2,
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


def group_step_flops(
    n_lm: int, n_cls: int, rollouts: int, prompt_len: int, resp_len: int, epochs: int
) -> dict:
    """Algorithmic FLOPs of one GRPO / RLOO iteration, the same count for both sides.

    As :func:`ppo_step_flops` without a critic: generation, reference and reward forwards over the
    ``rollouts`` (= prompts × G) sequences, and ``epochs`` forward+backward passes of the policy. The
    rollout-time policy log-prob forward is not counted (a faster implementation can avoid it).
    """
    seq = rollouts * (prompt_len + resp_len)
    out = {
        "generation": fwd_flops(n_lm, seq),
        "ref": fwd_flops(n_lm, seq),
        "reward": fwd_flops(n_cls, seq),
        "update": epochs * train_flops(n_lm, seq),
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


def group_result(
    side: str,
    task: str,
    meter,
    warmup: int,
    rollouts: int,
    seconds: float,
    fl: dict,
    update_s: float,
    breakdown: dict,
    work: dict,
    optimizer_steps: int,
) -> dict:
    """The result record both GRPO / RLOO sides print (the fields of :func:`ppo_result`).

    Args:
        meter: the side's meter; its clock stamps the end of every iteration (generation + all its updates).
        warmup: iterations before the timed window.
        rollouts: rollouts per iteration (prompts × G).
        breakdown: mean seconds per phase of a timed iteration, with ``"step total"``.
        work: counted by the side: prompts, rollouts, samples_per_prompt, prompt/response tokens, positions.
    """
    timed = len(meter.clock.stamps) - warmup
    return {
        "side": side,
        "task": task,
        "seconds": seconds,
        "cpu_seconds": meter.clock.timed_cpu_seconds(warmup),
        "throughput": timed * rollouts / seconds,
        "step_s": step_seconds(meter.clock.stamps, warmup),
        "per_step": rollouts,
        "unit": "rollouts/s",
        "flops_per_s": fl["total"] / breakdown["step total"],
        "update_flops_per_s": fl["update"] / update_s,
        "breakdown_s": breakdown,
        "work": {
            "iterations": len(meter.clock.stamps),
            "optimizer_steps": optimizer_steps,
            **work,
            "tokens": work["prompt_tokens"] + work["response_tokens"],
        },
    }
