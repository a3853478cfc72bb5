"""Equal work: what each task must do under the settings, and the check that both sides did exactly that.

Stdlib only (the peers' venvs import it). ``run.py`` calls :func:`verify_work` before it prints any ratio.
"""

from __future__ import annotations

from common import Settings
from group import group_plan


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
GROUP_EXACT = (
    "iterations",
    "optimizer_steps",
    "prompts",
    "rollouts",
    "samples_per_prompt",
    "prompt_tokens",
    "generated_positions",
)
SAMPLED = {"response_tokens": 0.15, "tokens": 0.15}
EXACT = {
    "rm": ("optimizer_steps", "pairs", "sequences", "tokens", "padded_positions"),
    "ppo": ("ppo_iterations", "minibatch_updates", "rollouts", "prompt_tokens", "generated_positions"),
    "grpo": GROUP_EXACT,
    "rloo": GROUP_EXACT,
}
APPROX = {"rm": {}, "ppo": SAMPLED, "grpo": SAMPLED, "rloo": SAMPLED}


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


def group_expected_work(s: Settings, task: str, prompt_tokens: int) -> dict:
    """The GRPO / RLOO work the settings ask for (:func:`group.group_plan`).

    Each iteration generates G samples of each of its prompts, no more (``samples_per_prompt`` lists the
    distinct per-prompt counts a side saw: ``[G]``), and takes epochs × minibatches optimizer steps. Every
    rollout has ``prompt_tokens`` prompt tokens and ``max_new_tokens`` generated positions: both sides pad
    responses to the longest of the batch, and with random weights some response of every batch runs to
    the cap.
    """
    plan = group_plan(s, task)
    n, rollouts = plan.iterations, plan.iterations * plan.rollouts
    return {
        "iterations": n,
        "optimizer_steps": n * plan.updates,
        "prompts": n * plan.prompts,
        "rollouts": rollouts,
        "samples_per_prompt": [plan.group_size],
        "prompt_tokens": rollouts * prompt_tokens,
        "generated_positions": rollouts * plan.max_new_tokens,
    }


def verify_work(
    task: str, lit: dict, peer: dict, expected: dict, sampled_tolerance: float | None = None
) -> None:
    """Raise :class:`UnequalWork` unless both sides did exactly the expected work (sampled counts: nearly).

    Args:
        task: ``"rm"``, ``"ppo"``, ``"grpo"`` or ``"rloo"``.
        lit, peer: the ``work`` dicts both sides report.
        expected: :func:`rm_expected_work`, :func:`ppo_expected_work` or :func:`group_expected_work` of the
            run's settings.
        sampled_tolerance: the allowed relative difference of the sampled counts (response tokens up to
            EOS) instead of :data:`SAMPLED`'s; forwards run over every generated position on both sides, so
            these counts do not change the FLOPs.
    """
    approx = APPROX[task] if sampled_tolerance is None else dict.fromkeys(APPROX[task], sampled_tolerance)
    bad = check_equal(lit, peer, EXACT[task], approx)
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
