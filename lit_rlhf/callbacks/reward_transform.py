"""``RewardTransformCallback``: turns raw reward-model scores into the reward PPO optimises.

The PPO module only computes raw scores ``(B, K)``, one column per reward model. At fit start this
callback computes (or loads from cache) the reference rewards r_ref(x) and installs itself as the module's
``reward_fn``; at every training step it then

1. looks up r_ref for the batch's prompts,
2. applies the transform per reward model (e.g. ``u = log σ(r − r_ref)``, the paper's),
3. combines the K transformed rewards with the aggregator (e.g. a sum = log P(good on all)),

and logs per reward model the raw and transformed means, the margin ``r − r_ref`` (mean, share above
r_ref, histogram) and the mean gradient weight ``du/dr`` — the numbers that say whether the transform is
active on your data. With no transform the raw reward passes through (summed over reward models).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lit_rlhf.aggregators import Sum
from lit_rlhf.reference import (
    ReferenceSpec,
    ReferenceTable,
    cache_key,
    load_or_compute,
    module_fingerprint,
    reduce_samples,
    sample_rewards,
)
from lit_rlhf.transforms import Identity

log = logging.getLogger(__name__)


class RewardTransformCallback(L.Callback):
    """Injects the reward transform and aggregation into PPO at every step.

    Args:
        transform: a transform from the ``transform/`` group; ``None`` = raw reward. One copy per reward
            model, so running statistics (whitening) are kept per reward model.
        aggregator: an aggregator from the ``aggregator/`` group; ``None`` = sum.
        reward: the ``reward/`` group: name → spec with a ``reference`` sub-config (see
            ``lit_rlhf.reference.ReferenceSpec``).
        n_samples: responses sampled per prompt from the reference policy to estimate r_ref.
        cache_dir: where sampled reference rewards are cached and shared between runs.
        seed: sampling seed for r_ref (fixed, so every run and sweep job shares one r_ref).
        histogram_every: log margin histograms every this many steps (0 = never).
    """

    def __init__(
        self,
        transform: Any | None = None,
        aggregator: Any | None = None,
        reward: Mapping[str, Any] | None = None,
        n_samples: int = 16,
        cache_dir: str = ".cache/lit_rlhf/reference",
        seed: int = 1234,
        histogram_every: int = 10,
    ) -> None:
        if n_samples < 1:
            raise ValueError(f"callbacks.reward_transform.n_samples must be >= 1, got {n_samples}")
        self.transform_template = transform if transform is not None else Identity()
        self.aggregator = aggregator if aggregator is not None else Sum()
        self.specs = {
            k: ReferenceSpec(**dict((v or {}).get("reference") or {})) for k, v in (reward or {}).items()
        }
        self.n_samples, self.cache_dir, self.seed = n_samples, Path(cache_dir), seed
        self.histogram_every = histogram_every
        self.transforms: dict[str, Any] = {}
        self.table: ReferenceTable | None = None
        self.calls = 0
        self.loaded_from_cache: bool | None = None
        self._pending_state: dict | None = None

    # ------------------------------------------------------------- set-up
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        names = pl_module.reward_names
        self.transforms = {n: copy.deepcopy(self.transform_template) for n in names}
        if self._pending_state:
            self._load_transforms(self._pending_state)
        pl_module.reward_fn = self

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.table is None:
            self.table = self.compute_reference(trainer, pl_module)

    def compute_reference(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ReferenceTable:
        """Sample n responses per prompt from π_ref, score them, reduce per reward model (cached)."""
        from lit_rlhf.data.tokenize import encode_prompts, pad_batch  # noqa: PLC0415

        dm = trainer.datamodule
        dm.setup("fit")
        records = list(dm.all_records)
        prompts = [r.prompt for r in records]
        tok, gen = pl_module.tokenizer, pl_module.generation_config
        names = pl_module.reward_names
        missing = [n for n in names if n not in self.specs]
        if missing and self.specs:
            raise KeyError(f"reward models {missing} have no entry in the `reward` config")
        specs = {n: self.specs.get(n, ReferenceSpec()) for n in names}
        max_prompt = getattr(dm, "max_prompt_tokens", 32)

        def encode(texts: Sequence[str]) -> tuple[Tensor, Tensor]:
            ids, mask = pad_batch(encode_prompts(tok, texts, max_prompt), tok.pad_token_id, left=True)
            return ids.to(pl_module.device), mask.to(pl_module.device)

        parts = {
            "ref": module_fingerprint(pl_module.reference_state_dict()),
            "reward_models": {n: module_fingerprint(pl_module.reward_models[n]) for n in names},
            "prompts": cache_key({"p": prompts, "ids": [r.id for r in records]}),
            "n": self.n_samples,
            "seed": self.seed,
            "generation": {k: getattr(gen, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p")},
        }
        path = self.cache_dir / f"samples-{cache_key(parts)}.pt"

        def compute() -> dict[str, Tensor]:
            log.info(
                "r_ref: sampling %d responses for each of %d prompts (cached in %s)",
                self.n_samples,
                len(prompts),
                path,
            )
            state = torch.random.get_rng_state()
            torch.manual_seed(self.seed)
            try:
                samples = sample_rewards(
                    pl_module.generate_reference,
                    pl_module.score,
                    encode,
                    prompts,
                    self.n_samples,
                )
            finally:
                torch.random.set_rng_state(state)
            return {n: samples[..., k] for k, n in enumerate(names)}

        if trainer.world_size > 1:  # rank 0 samples and writes; the others read the cache
            if trainer.is_global_zero:
                load_or_compute(path, compute)
            trainer.strategy.barrier("r_ref")
        samples, self.loaded_from_cache = load_or_compute(path, compute)

        values = {}
        for n in names:
            spec = specs[n]
            if spec.statistic == "response":
                ids, mask = encode(prompts)
                resp = tok(spec.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                resp_t = torch.tensor(resp, device=ids.device).expand(len(prompts), -1)
                seq = torch.cat([ids, resp_t], 1)
                full = torch.cat([mask, torch.ones_like(resp_t)], 1)
                k = names.index(n)
                values[n] = pl_module.score(seq, full)[:, k].cpu()
            else:
                values[n] = reduce_samples(samples[n], spec)
        for n in names:
            log.info(
                "r_ref[%s] (%s): mean %.3f, std %.3f over %d prompts",
                n,
                specs[n].statistic,
                values[n].mean(),
                values[n].std(),
                len(prompts),
            )
        return ReferenceTable([r.id for r in records], values)

    # ------------------------------------------------------------- the reward
    def transformed(self, scores: Tensor, prompt_ids: Tensor, update: bool = False) -> tuple[Tensor, Tensor]:
        """(B, K) raw scores → ((B, K) transformed, (B, K) r_ref)."""
        assert self.table is not None, "reference rewards are computed at fit start"
        r_ref = self.table.lookup(prompt_ids).to(scores)  # (B, K)
        cols = []
        for k, name in enumerate(self.table.names):
            t = self.transforms[name]
            if update and hasattr(t, "update"):
                t.update(scores[:, k])
            cols.append(t(scores[:, k], r_ref[:, k]))
        return torch.stack(cols, -1), r_ref

    def __call__(self, scores: Tensor, prompt_ids: Tensor, pl_module: L.LightningModule) -> Tensor:
        """The scalar reward of each rollout, (B,). Called by ``PPOModule.training_step``."""
        self.calls += 1
        u, r_ref = self.transformed(scores, prompt_ids, update=True)
        total = self.aggregator(u, self.table.names)  # (B,)
        self._log(pl_module, scores, u, r_ref, total)
        return total

    def _log(self, pl_module: L.LightningModule, r: Tensor, u: Tensor, r_ref: Tensor, total: Tensor) -> None:
        B = len(total)
        margin = r - r_ref  # (B, K)
        metrics = {"reward/total": total.mean()}
        for k, name in enumerate(self.table.names):
            weight = self.transforms[name].weight(r[:, k], r_ref[:, k])
            metrics |= {
                f"reward/{name}_raw": r[:, k].mean(),
                f"reward/{name}_transformed": u[:, k].mean(),
                f"reward/{name}_margin": margin[:, k].mean(),
                f"reward/{name}_above_ref": (margin[:, k] > 0).float().mean(),
                f"reward/{name}_weight": weight.float().mean(),
            }
        pl_module.log_dict(metrics, batch_size=B)
        logger = pl_module.logger
        step = pl_module.trainer.global_step if pl_module._trainer else 0
        if self.histogram_every and self.calls % self.histogram_every == 1 and hasattr(logger, "experiment"):
            exp = logger.experiment
            if hasattr(exp, "add_histogram"):
                for k, name in enumerate(self.table.names):
                    exp.add_histogram(f"reward/{name}_margin", margin[:, k].detach().cpu(), step)
                    exp.add_histogram(f"reward/{name}_raw", r[:, k].detach().cpu(), step)
                    exp.add_histogram(f"reward/{name}_transformed", u[:, k].detach().cpu(), step)

    # ------------------------------------------------------------- evaluation outputs
    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self.table is None or not isinstance(outputs, dict) or "policy_scores" not in outputs:
            return
        for who in ("policy", "sft"):
            u, r_ref = self.transformed(outputs[f"{who}_scores"], outputs["prompt_ids"])
            outputs[f"{who}_transformed"] = u
            outputs["r_ref"] = r_ref

    # ------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "transforms": {n: t.state_dict() for n, t in self.transforms.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.calls = state_dict.get("calls", 0)
        self._pending_state = state_dict
        if self.transforms:
            self._load_transforms(state_dict)

    def _load_transforms(self, state: dict) -> None:
        for n, s in state.get("transforms", {}).items():
            if n in self.transforms:
                self.transforms[n].load_state_dict(s)
