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
RUNS = HERE / "runs"


@dataclass(frozen=True)
class Settings:
    """The one set of settings both sides run with (written to ``runs/settings.json`` by ``prepare.py``)."""

    seed: int = 0
    threads: int = 2
    # model: GPT-2 built from one config
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 128
    # reward model
    rm_batch_pairs: int = 32
    rm_max_prompt_tokens: int = 32
    rm_max_length: int = 64
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
    def load(cls, path: str | Path | None = None) -> Settings:
        return cls(**json.loads(Path(path or RUNS / "settings.json").read_text()))

    def dump(self, path: str | Path | None = None) -> None:
        Path(path or RUNS / "settings.json").write_text(json.dumps(asdict(self), indent=1))


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
    """Parameters that take part in a matmul per token: the blocks' weights plus the output head.

    Embedding lookups cost no FLOPs; GPT-2's tied ``wte`` counts once when it is the LM head.
    """
    n = sum(p.numel() for name, p in model.named_parameters() if ".h." in f".{name}" or name.startswith("h."))
    for head in ("lm_head", "score", "classifier"):
        mod = getattr(model, head, None)
        if mod is not None:
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
