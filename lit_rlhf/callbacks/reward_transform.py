"""``RewardTransformCallback``: turns raw reward-model scores into the reward PPO optimises.

The PPO module only computes raw scores ``(B, K)``, one column per reward model. At fit start this
callback computes (or loads from cache) the reference rewards r_ref(x) and installs itself as the module's
``reward_fn``; at every training step it then

1. gathers the batch's raw scores and prompt ids from every process (under DDP), so that running
   statistics (whitening) and telemetry are those of the global batch, the same on every rank;
2. looks up r_ref for the batch's prompts (M references per prompt when the transform asks for several:
   PAR's ``u = mean_m σ(r − r_ref,m)``, :class:`lit_rlhf.rewards.transforms.Sigmoid`),
3. applies the transform per reward model (e.g. ``u = log σ(r − r_ref)``, the paper's),
4. combines the K transformed rewards with the aggregator (e.g. a sum = log P(good on all)),

and returns this process's rows. It logs, per reward model and over the global batch, the raw and
transformed means (``reward/<name>_raw``, ``reward/<name>_transformed``), the margin ``r − r_ref``
(``reward/<name>_margin``, share above r_ref ``reward/<name>_above_ref``) and the mean gradient weight
``du/dr`` (``reward/<name>_weight``) — the numbers that say whether the transform is active on your data;
with M references the margin is to their mean and the share is over (rollout, reference) pairs —
and every ``histogram_every`` steps the histograms ``reward_hist/<name>_{raw,transformed,margin}`` (a tag
is either a scalar or a histogram: TensorBoard shows a tag logged as both in neither plugin). With no
transform the raw reward passes through (summed over reward models).

r_ref is computed from the exact prompt token ids the rollouts use (the datamodule's encoded items), so a
change of truncation, tokenizer or chat template cannot reuse r_ref of other prompts. A fixed response (a
refusal, ``reward.<name>.reference.statistic=refusal|response``) is scored after those same ids.
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

from lit_rlhf.callbacks.distributed import gather_rows
from lit_rlhf.callbacks.progress import scalar_step
from lit_rlhf.data.tokenize import PromptItem, pad_batch
from lit_rlhf.rewards.aggregators import Sum, aggregate
from lit_rlhf.rewards.reference import (
    FIXED,
    HAS_EOS,
    ReferenceSpec,
    ReferenceTable,
    fill_missing,
    fixed_response_rewards,
    generation_settings,
    load_or_compute,
    module_fingerprint,
    penalised,
    reward_fingerprint,
    sample_references,
    sample_rewards,
    sampling_key,
    scorer,
)
from lit_rlhf.rewards.transforms import Identity

log = logging.getLogger(__name__)


def histogram_due(call: int, every: int) -> bool:
    """Whether the ``call``-th step (1-based) logs histograms: steps 1, 1 + every, 1 + 2·every, …;
    never when ``every`` is 0."""
    return every > 0 and (call - 1) % every == 0


def sampler_settings(pl_module: L.LightningModule) -> dict[str, Any]:
    """What the r_ref cache keys on besides the distribution: the engine that samples, if not ``hf``
    (so ``hf`` keys stay those of runs that had no choice)."""
    engine = getattr(pl_module, "generation", None)
    return engine.sampler_settings() if hasattr(engine, "sampler_settings") else {}


def prompt_items(dm: L.LightningDataModule) -> list[PromptItem]:
    """Every prompt of a set-up ``PromptDataModule`` as the rollouts see it (training then validation):
    ``id``, ``prompt`` and the truncated ``input_ids``."""
    items = getattr(dm, "all_items", None)
    if items is None:  # datamodules without the ``all_items`` property
        items = [*dm._train, *dm._val]
    return list(items)


class RewardTransformCallback(L.Callback):
    """Injects the reward transform and aggregation into PPO at every step.

    Args:
        transform: a transform from the ``transform/`` group; ``None`` = raw reward. One copy per reward
            model, so running statistics (whitening) are kept per reward model.
        aggregator: an aggregator from the ``aggregator/`` group; ``None`` = sum.
        reward: the ``reward/`` group: name → spec with a ``reference`` sub-config (see
            ``lit_rlhf.rewards.reference.ReferenceSpec``) and its ``data`` (the world's refusal needs the
            world's).
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
        cache_dir: str = ".cache/lit_rlhf/rewards/reference",
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
        self.data = {k: (v or {}).get("data") for k, v in (reward or {}).items()}
        # reward.<name>.transform: that reward's own transform (e.g. for a kind=score function)
        self.own_transforms = {k: (v or {}).get("transform") for k, v in (reward or {}).items()}
        # the references the transform asks for (None, None = each reward model's own r_ref)
        samples = getattr(self.transform_template, "samples", None)
        quantiles = getattr(self.transform_template, "quantiles", None)
        if (samples is not None or quantiles is not None) and not getattr(
            self.transform_template, "multi_reference", False
        ):
            raise ValueError(f"{self.transform_template!r} asks for several references but takes one r_ref")
        self.ref_samples, self.ref_quantiles = samples, quantiles
        if histogram_every < 0:
            raise ValueError(
                f"callbacks.reward_transform.histogram_every must be >= 0 (0 = never), got {histogram_every}"
            )
        self.n_samples, self.cache_dir, self.seed = n_samples, Path(cache_dir), seed
        self.histogram_every = histogram_every
        self.transforms: dict[str, Any] = {}
        self.table: ReferenceTable | None = None
        self.calls = 0
        self.loaded_from_cache: bool | None = None
        self._pending_state: dict | None = None

    # ------------------------------------------------------------- set-up
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        functions = getattr(pl_module, "reward_functions", {})
        self.transforms = {}
        for n in (
            pl_module.reward_names
        ):  # a probability's own log max(p, ε); else reward.<n>.transform or +transform
            fixed = functions[n].transform if n in functions else None
            own = self.own_transforms.get(n)
            self.transforms[n] = fixed or copy.deepcopy(own if own is not None else self.transform_template)
        if self._pending_state:
            self._load_transforms(self._pending_state)
        pl_module.reward_fn = self
        pl_module.reward_is_advantage = self.gives_advantages  # GDPO: GRPO uses it as is

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.table is None:
            self.table = self.compute_reference(trainer, pl_module)

    def compute_reference(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ReferenceTable:
        """r_ref of every prompt of the trainer's datamodule (see :meth:`reference_table`)."""
        dm = trainer.datamodule
        dm.setup("fit")
        return self.reference_table(pl_module, prompt_items(dm), trainer)

    def reference_table(
        self, pl_module: L.LightningModule, items: Sequence[PromptItem], trainer: L.Trainer | None = None
    ) -> ReferenceTable:
        """Sample n responses per prompt from π_ref, score them, reduce per reward model (cached).

        Args:
            pl_module: the PPO module (its reference policy, reward models, tokenizer, generation config).
            items: the prompts exactly as the rollouts use them (``id`` and truncated ``input_ids``).
            trainer: with several processes, every rank samples (in step: a sharded π_ref needs all of
                them in each forward) and rank 0 writes the cache (``reference.load_or_compute``).

        The samples carry the missing-EOS penalty the rollouts get (``task.module.missing_eos_penalty``),
        applied on load: a sample cut without EOS scores r − penalty.
        """
        tok, names = pl_module.tokenizer, pl_module.reward_names
        missing = [n for n in names if n not in self.specs]
        if missing and self.specs:
            raise KeyError(f"reward models {missing} have no entry in the `reward` config")
        if HAS_EOS in names:
            raise ValueError(f"a reward model may not be named {HAS_EOS!r} (the reference cache's own key)")
        specs = {n: self.specs.get(n, ReferenceSpec()) for n in names}
        penalty = getattr(pl_module, "missing_eos_penalty", None)
        ids = [int(it["id"]) for it in items]
        prompts = [list(it["input_ids"]) for it in items]

        def pad(seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
            x, mask = pad_batch(seqs, tok.pad_token_id, left=True)  # (b, T) each
            return x.to(pl_module.device), mask.to(pl_module.device)

        key = sampling_key(
            reference=module_fingerprint(pl_module.reference_state_dict()),
            reward_models={
                n: reward_fingerprint(pl_module.reward_models[n])
                if n in pl_module.reward_models
                else pl_module.reward_functions[n].fingerprint()
                for n in names
            },
            prompts=list(zip(ids, prompts)),
            n=self.n_samples,
            seed=self.seed,
            generation=generation_settings(pl_module.generation_config) | sampler_settings(pl_module),
        )
        path = self.cache_dir / f"samples-{key}.pt"

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
                samples, has_eos = sample_rewards(  # (P, n, K), (P, n)
                    pl_module.generate_reference,
                    scorer(pl_module),
                    pad,
                    prompts,
                    self.n_samples,
                    prompt_ids=ids,
                )
            finally:
                torch.random.set_rng_state(state)
            return {**{n: samples[..., k] for k, n in enumerate(names)}, HAS_EOS: has_eos}

        strategy = trainer.strategy if trainer is not None and trainer.world_size > 1 else None
        samples, self.loaded_from_cache = load_or_compute(
            path,
            compute,
            strategy,
            usable=lambda d: penalty is None or HAS_EOS in d,  # older caches lack it
        )
        models = getattr(pl_module, "reward_models", {})  # as rollouts: reward models' scores only
        samples = {
            n: penalised(samples[n], samples.get(HAS_EOS), penalty if n in models else None) for n in names
        }

        values = {}
        for k, n in enumerate(names):
            spec = specs[n]
            if spec.statistic in FIXED:  # one reference: the reward of a fixed response (a refusal)
                text = self.fixed_response_text(n, spec)
                values[n] = fixed_response_rewards(pl_module, pad, prompts, text, ids)[:, k : k + 1]
                how = f"{spec.statistic} {text!r}"
            else:  # (P, M): the spec's statistic, or the references the transform asks for
                values[n] = sample_references(samples[n], spec, self.ref_samples, self.ref_quantiles)
                how = spec.statistic
                if self.ref_samples is not None:
                    how = f"first {self.ref_samples} of {self.n_samples} samples"
                elif self.ref_quantiles is not None:
                    how = f"quantiles {list(self.ref_quantiles)}"
            values[n] = fill_missing(n, values[n])
            log.info(
                "r_ref[%s] (%s): %d per prompt, mean %.3f, std %.3f over %d prompts",
                n,
                how,
                values[n].shape[-1],
                values[n].mean(),
                values[n].std(),
                len(prompts),
            )
        return ReferenceTable(ids, values)

    def fixed_response_text(self, name: str, spec: ReferenceSpec) -> str:
        """The text a fixed-response reference scores: ``reference.response``, or for ``refusal`` without
        one the embedded world's refusal, if the reward model's data is the world's (a folder that
        ``build_world`` wrote: it holds ``world.json``)."""
        if spec.response:
            return spec.response
        data = self.data.get(name)
        if data is None or not (Path(str(data)).parent / "world.json").is_file():
            raise ValueError(
                f"reward.{name}.reference.statistic=refusal needs reward.{name}.reference.response (the text "
                "of a refusal in your data's language, e.g. \"I can't help with that.\"): the embedded "
                "world's refusal is only used on the world's data (data=world)"
            )
        from lit_rlhf.world import REFUSAL  # noqa: PLC0415

        return REFUSAL

    # ------------------------------------------------------------- the reward
    def references(self, name: str, prompt_ids: Tensor, r_ref: Tensor) -> Tensor:
        """What reward model ``name``'s transform gets as r_ref: (B,) for one reference per prompt (the
        column of ``r_ref``), (B, M) for several."""
        assert self.table is not None, "reference rewards are computed at fit start"
        refs = self.table.refs[name]
        if refs.shape[-1] == 1:
            return r_ref[:, self.table.names.index(name)]  # (B,)
        return self.table.lookup_refs(prompt_ids, name).to(r_ref)  # (B, M)

    def transformed(self, scores: Tensor, prompt_ids: Tensor, update: bool = False) -> tuple[Tensor, Tensor]:
        """(B, K) raw scores → ((B, K) transformed, (B, K) r_ref — the mean reference if several);
        ``update`` folds ``scores`` into the transforms' running statistics first."""
        assert self.table is not None, "reference rewards are computed at fit start"
        r_ref = self.table.lookup(prompt_ids).to(scores)  # (B, K)
        cols = []
        for k, name in enumerate(self.table.names):
            t, r = self.transforms[name], scores[:, k]
            ok = torch.isfinite(r)  # NaN: a reward function's None, left out of its term and statistics
            if update and hasattr(t, "update") and ok.any():
                t.update(r[ok])
            u = torch.full_like(r, float("nan"))
            if ok.any():
                u[ok] = t(r[ok], self.references(name, prompt_ids, r_ref)[ok]).to(u)
            cols.append(u)
        return torch.stack(cols, -1), r_ref

    def __call__(self, scores: Tensor, prompt_ids: Tensor, pl_module: L.LightningModule) -> Tensor:
        """The scalar reward of each of this process's rollouts, (B,). Called by
        ``PPOModule.training_step`` (on every rank at once under DDP: it gathers the global batch)."""
        self.calls += 1
        all_scores, mine = gather_rows(scores)  # (N, K), N = B summed over ranks
        all_ids, _ = gather_rows(prompt_ids)  # (N,)
        u, r_ref = self.transformed(all_scores, all_ids, update=True)  # (N, K) each
        names = self.table.names
        if getattr(self.aggregator, "needs_groups", False):  # GDPO: groups of G consecutive rows
            if not torch.isfinite(u).all():
                raise ValueError(
                    f"aggregator={type(self.aggregator).__name__} cannot leave out a reward function's None "
                    "yet (it normalises each reward over the group); return a number, or use aggregator=sum"
                )
            G = int(getattr(pl_module, "samples_per_prompt", 1))
            total = self.aggregator(u, names, group_size=G)  # (N,)
            self._log_per_reward_advantages(pl_module, self.aggregator.per_reward(u, names, G), total)
        else:
            total = aggregate(self.aggregator, u, names)  # (N,): over each row's applicable rewards
        self._log(pl_module, all_scores, u, r_ref, total, all_ids)
        return total[mine]  # (B,)

    @property
    def gives_advantages(self) -> bool:
        """Whether the reward is already an advantage (GDPO's whitened sum): GRPO then uses it as is."""
        return bool(getattr(self.aggregator, "gives_advantages", False))

    def _log_per_reward_advantages(self, pl_module: L.LightningModule, terms: Tensor, total: Tensor) -> None:
        """Each reward's share of a GDPO advantage: ``reward/<name>_advantage_abs`` (mean |term|) and
        ``reward/<name>_advantage_agree`` (share of rollouts whose term has the total's sign)."""
        metrics = {}
        for k, name in enumerate(self.table.names):
            metrics[f"reward/{name}_advantage_abs"] = terms[:, k].abs().mean()
            agree = (torch.sign(terms[:, k]) == torch.sign(total)) & (terms[:, k] != 0)
            metrics[f"reward/{name}_advantage_agree"] = agree.float().mean()
        pl_module.log_dict(metrics, batch_size=len(total))

    def _log(
        self,
        pl_module: L.LightningModule,
        r: Tensor,
        u: Tensor,
        r_ref: Tensor,
        total: Tensor,
        prompt_ids: Tensor | None = None,
    ) -> None:
        """Telemetry of the global batch (the same value on every rank, so no further reduction). With M
        references the margin is to their mean and "above" counts (rollout, reference) pairs."""
        margin = r - r_ref  # (N, K)
        metrics = {"reward/total": total.mean()}
        above = []
        for k, name in enumerate(self.table.names):
            refs = self.references(name, prompt_ids, r_ref) if prompt_ids is not None else r_ref[:, k]
            ok = torch.isfinite(r[:, k])  # (N,) the rollouts this reward applies to
            if not ok.any():
                continue
            weight = self.transforms[name].weight(r[ok, k], refs[ok])
            wins = r[ok, k, None] > (refs[ok] if refs.dim() == 2 else refs[ok, None])  # (n, M)
            above.append(wins.float().mean(-1))  # (n,)
            metrics |= {
                f"reward/{name}_raw": r[ok, k].mean(),
                f"reward/{name}_transformed": u[ok, k].mean(),
                f"reward/{name}_margin": margin[ok, k].mean(),
                f"reward/{name}_above_ref": above[-1].mean(),
                f"reward/{name}_weight": weight.float().mean(),
            }
            if not ok.all():
                metrics[f"reward/{name}_applicable"] = ok.float().mean()
        pl_module.log_dict(metrics, batch_size=len(total))
        if isinstance(pl_module, L.LightningModule):  # the progress bar: share above r_ref, all models
            above = torch.cat(above).mean()
            pl_module.log("above_ref", above, prog_bar=True, logger=False, batch_size=len(total))
        trainer = pl_module._trainer
        if not histogram_due(self.calls, self.histogram_every) or (trainer and not trainer.is_global_zero):
            return
        exp = getattr(pl_module.logger, "experiment", None)
        if exp is None or not hasattr(exp, "add_histogram"):
            return
        step = scalar_step(trainer)  # the scalars' step (global_step counts every optimizer's steps)
        for k, name in enumerate(self.table.names):
            for what, x in (("raw", r[:, k]), ("transformed", u[:, k]), ("margin", margin[:, k])):
                x = x[torch.isfinite(x)].detach().float().cpu()
                if len(x):
                    exp.add_histogram(f"reward_hist/{name}_{what}", x, step)

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
