"""Evaluation of a policy-optimisation module on held-out prompts (what the gold and KL metrics read).

Shared by every task that has an actor, a reference and reward models: the module provides ``generate``,
``generate_reference``, ``all_scores``, ``_token_logprobs``, ``_reference_logprobs``, ``tokenizer`` and
``eval_samples_per_prompt`` and ``seeded_rows``.

Sample j of prompt p is drawn from a seed of (p, j) and of who samples (the policy or π_ref), not from the
evaluation batch: the samples are the same at every evaluation (π_ref's) and whichever way the held-out
prompts are batched or spread over DDP processes.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_rlhf.rlhf.kl import masked_kl
from lit_rlhf.rollout.decoding import row_seeds

EVAL = 0x5EED_E7A1  # the key of evaluation samples (training rollouts use the run seed and the iteration)


@torch.no_grad()
def evaluate(module: Any, batch: dict) -> dict:
    """Samples of the policy and of the reference on held-out prompts, for the evaluation callbacks.

    Returns prompts, responses of both, raw scores of both, and the per-sequence KL(π‖π_ref) of the
    policy's samples (k1, an unbiased estimate of the sequence KL). Logs ``val/kl`` and
    ``val/response_length``.
    """
    tok = module.tokenizer
    n = module.eval_samples_per_prompt
    ids, mask = (
        batch["input_ids"].repeat_interleave(n, 0),
        batch["attention_mask"].repeat_interleave(n, 0),
    )
    prompt_ids = batch["prompt_ids"].repeat_interleave(n, 0)
    P = ids.shape[1]
    out = {"prompts": [p for p in batch["prompts"] for _ in range(n)], "prompt_ids": prompt_ids}
    policy = lambda i, m: module.generate(module.actor, i, m)  # noqa: E731
    rows = [int(p) * n + j for p in batch["prompt_ids"].tolist() for j in range(n)]  # (B·n,)
    for k, (who, sample) in enumerate((("sft", module.generate_reference), ("policy", policy))):
        with module.seeded_rows(row_seeds((EVAL, k, n), rows)):
            seq, rmask = sample(ids, mask)[:2]
        full = torch.cat([mask, rmask], 1)
        out[f"{who}_responses"] = tok.batch_decode(
            seq[:, P:].masked_fill(rmask == 0, tok.pad_token_id), skip_special_tokens=True
        )
        out[f"{who}_scores"] = module.all_scores(seq, full, prompt_ids, P)
        out[f"{who}_length"] = rmask.sum(-1).float()
        if who == "policy":
            lp = module._token_logprobs(module.actor, seq, full, P)
            ref_lp = module._reference_logprobs(seq, full, P)
            out["kl"] = masked_kl(lp, ref_lp, rmask, "k1").sum(-1)  # padding selected away, not × 0
    module.log_dict(
        {"val/kl": out["kl"].mean(), "val/response_length": out["policy_length"].mean()},
        batch_size=len(ids),
        sync_dist=True,
    )
    return out
