"""Padding after the EOS holds whatever the models return there (a −inf log-prob of the pad token, NaN
values): the NaN/inf checks and every masked sum look at the response tokens only, and select rather than
multiply (``x * 0`` keeps a NaN; ``torch.where`` drops it)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from tiny_hf import make_tokenizer

from lit_rlhf.rollout.evaluation import evaluate
from lit_rlhf.rollout.rollout import Rollout
from lit_rlhf.training.faults import FaultPolicy

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # row 0 ended with EOS at token 2; token 3 is padding


def rollout(**bad: tuple[tuple[int, int], float]) -> Rollout:
    """Two rollouts of four response tokens; ``bad``: field → ((row, token), value) written into it."""
    fields = {
        "logprobs": torch.full((2, 4), -1.0),
        "ref_logprobs": torch.full((2, 4), -1.2),
        "values": torch.zeros(2, 4),
        "scores": torch.zeros(2, 1),
    }
    for name, (where, value) in bad.items():
        fields[name][where] = value
    ids = torch.zeros(2, 6, dtype=torch.long)
    return Rollout(
        torch.arange(2), ids, torch.ones_like(ids), MASK, has_eos=torch.tensor([True, False]), **fields
    )


class Host(FaultPolicy):
    """The attributes FaultPolicy reads from a PolicyModule, in one process."""

    algorithm, iteration, max_bad_batches = "grpo", 0, 3
    reward_models = {"helpful": None}
    skipped_batches = _bad_streak = 0
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda ok, all: ok))

    def log(self, *args, **kwargs) -> None:
        pass


def test_a_non_finite_value_on_padding_does_not_skip_the_batch() -> None:
    host = Host()
    pad = (0, 3)
    assert host._finite_rollout(rollout(logprobs=(pad, -float("inf"))))
    assert host._finite_rollout(rollout(ref_logprobs=(pad, float("nan")), values=(pad, float("inf"))))
    assert host.skipped_batches == 0
    # a response token's NaN still skips the batch
    assert not host._finite_rollout(rollout(logprobs=((0, 2), float("nan"))))
    assert host.skipped_batches == 1


def test_evaluation_kl_ignores_a_non_finite_log_prob_on_padding() -> None:
    """``val/kl`` of a policy sample whose padding has log-prob −inf (k1 summed over response tokens)."""
    tok = make_tokenizer("llama")
    lp = torch.tensor([[-1.0, -2.0, -1.0, -float("inf")], [-1.0, -1.0, -1.0, -1.0]])
    module = SimpleNamespace(
        tokenizer=tok,
        eval_samples_per_prompt=1,
        seeded_rows=lambda seeds: __import__("contextlib").nullcontext(),
        generate=lambda model, ids, mask: (torch.cat([ids, torch.ones_like(MASK)], 1), MASK, None),
        generate_reference=lambda ids, mask: (torch.cat([ids, torch.ones_like(MASK)], 1), MASK, None),
        actor=None,
        all_scores=lambda seq, mask, prompt_ids, P: torch.zeros(len(seq), 1),
        _token_logprobs=lambda model, seq, mask, P: lp,
        _reference_logprobs=lambda seq, mask, P: torch.full((2, 4), -1.5),
        log_dict=lambda *a, **k: None,
    )
    batch = {
        "input_ids": torch.ones(2, 2, dtype=torch.long),
        "attention_mask": torch.ones(2, 2, dtype=torch.long),
        "prompt_ids": torch.arange(2),
        "prompts": ["a", "b"],
    }
    out = evaluate(module, batch)
    torch.testing.assert_close(out["kl"], torch.tensor([0.5 - 0.5 + 0.5, 4 * 0.5]))
