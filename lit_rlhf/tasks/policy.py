"""What every policy-optimisation task shares (PPO, GRPO, RLOO, REINFORCE++), with manual optimization.

One training step = one iteration on a batch of prompts:

1. roll out: sample responses under the run's pinned distribution with the ``generation`` engine
   (:mod:`lit_rlhf.generation`: ``hf`` = the actor's own ``generate``; ``vllm`` = a colocated engine kept in
   step with the actor, whose log-probs give the off-policy correction, :mod:`lit_rlhf.rlhf.offpolicy`);
2. score: log-probs of the policy and the frozen reference, the RAW score of every reward model, and (PPO
   only) the critic's values. The reward optimised comes from ``self.reward_fn``, which the
   ``RewardTransformCallback`` installs (transform per reward model, then aggregation), so the paper's
   ``log σ(r − r_ref)`` and its AND-sum work under every algorithm;
3. :meth:`PolicyModule.optimise` — the algorithm: advantages, then epochs of minibatch updates;
4. the KL controller, the learning-rate schedule, and the logs under ``<algorithm>/…``.

Under DDP the W processes compute what one process holding the global batch would, up to the order of
floating-point additions: row i of the global batch samples from its own seed (seed, iteration, i); the
minibatches are cut from one permutation of the global batch; whitening and loss normalisers are global
(:meth:`PolicyModule.all_sum`, :meth:`PolicyModule.shard_norms`).

Subclasses implement :meth:`optimise` (and, with a critic, :meth:`rollout_values` and the optimizers).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from lit_rlhf.generation import Samples
from lit_rlhf.generation.hf import HFGeneration
from lit_rlhf.models import lora
from lit_rlhf.models.scoring import reward_scores
from lit_rlhf.rewards.reward_function import RewardFunction, function_scores
from lit_rlhf.rlhf import AdaptiveKLController, FixedKLController, masked_kl, masked_mean
from lit_rlhf.rollout import shared_prefix
from lit_rlhf.rollout.decoding import row_seeds
from lit_rlhf.rollout.evaluation import evaluate
from lit_rlhf.rollout.rollout import Rollout, eos_token_ids, sampling_config, token_logprobs
from lit_rlhf.tasks.config import PolicyConfig, build_config
from lit_rlhf.training.engine import EngineSampling
from lit_rlhf.training.faults import FaultPolicy
from lit_rlhf.training.first_forward import FirstForward
from lit_rlhf.training.fsdp import Sharded, is_sharded
from lit_rlhf.training.optim import warmup_schedule
from lit_rlhf.training.precision import FusedClipping, cached_casts
from lit_rlhf.training.sharding import ROLLOUT, DataParallel
from lit_rlhf.training.state import PolicyState

log = logging.getLogger(__name__)
RewardFn = Callable[[Tensor, Tensor, "PolicyModule"], Tensor]


def raw_sum(scores: Tensor, prompt_ids: Tensor, module: PolicyModule) -> Tensor:
    """Default reward when no callback installs one: the sum of raw reward-model scores."""
    return scores.sum(-1)


def disable_dropout(model: nn.Module) -> None:
    """The ratio π/π_old must be 1 before any update: no dropout anywhere (as TRL and OpenRLHF do)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


class PolicyModule(
    DataParallel, FaultPolicy, PolicyState, Sharded, FusedClipping, EngineSampling, FirstForward
):
    """Rollouts, scoring, evaluation, fault policy and state of a policy against frozen reward models.

    Args:
        actor: the policy, a causal LM initialised from the SFT model.
        ref: frozen reference policy π_ref (the SFT model) for the KL term; ``None`` when the actor is a
            LoRA model (``lora=…``): π_ref is then the actor with its adapters off (no second copy).
        reward_models: name → frozen reward model (``*ForSequenceClassification``, one label).
        tokenizer: shared by all models (its pad and eos ids are used).
        optimizer: partial optimizer (the ``optimizer/`` group).
        config: the algorithm's settings (:class:`~lit_rlhf.tasks.config.PolicyConfig` or the subclass's
            ``config_class``); ``None`` = built from ``settings``.
        reward_functions: name → :class:`~lit_rlhf.rewards.reward_function.RewardFunction` (rules, verifiers),
            scored after the reward models: ``reward_names`` lists the models, then the functions.
        **settings: the same settings as flat keys (what Hydra's ``task.module.*`` passes).
        generation: the engine that samples (the ``generation`` group; ``None`` = ``hf``, the actor's own
            ``generate``). An engine that holds its own copy of the weights (``vllm``) is synced from the
            actor before each rollout that follows an update, and from π_ref before π_ref's samples.
    """

    algorithm = "policy"  # the TensorBoard prefix of the subclass: ppo/…, grpo/…
    config_class: type[PolicyConfig] = PolicyConfig  # the subclass's settings

    def __init__(
        self,
        actor: PreTrainedModel,
        ref: PreTrainedModel | None,
        reward_models: dict[str, PreTrainedModel],
        tokenizer,
        optimizer: Callable[..., torch.optim.Optimizer],
        config: PolicyConfig | None = None,
        reward_functions: dict[str, RewardFunction] | None = None,
        generation: Any = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        self.config = c = build_config(self.config_class, config, settings)
        # all but the networks: `Module.load_from_checkpoint(path, actor=…, ref=…, …)` rebuilds the module
        self.save_hyperparameters(dataclasses.asdict(c))
        self.automatic_optimization = False
        # strict: the frozen models (not stored) are the only keys a checkpoint may lack (on_load_checkpoint)
        self.strict_loading = True
        if not reward_models and not reward_functions:
            raise ValueError(f"task={self.algorithm} needs at least one reward (the `reward` group)")
        if ref is None and not lora.is_lora(actor):
            raise ValueError(f"{type(self).__name__} needs a reference policy: pass ref, or a LoRA actor")
        self.actor, self.ref = actor, ref
        self.reward_models = nn.ModuleDict(reward_models)
        self.reward_functions = dict(reward_functions or {})
        self.reward_names = [*reward_models, *self.reward_functions]
        self.records: dict[int, Any] = {}  # prompt id → dataset record, for the reward functions (setup)
        for frozen in self.frozen_models():
            frozen.requires_grad_(False).eval()
        for m in (self.actor, self.ref):
            if m is not None:
                disable_dropout(m)
        self.tokenizer, self.optimizer_fn = tokenizer, optimizer
        # each distinct prompt of a batch computed once for all its responses (G ≥ 2, evaluation samples)
        self.share_prefix, self.minibatch_by_group = c.shared_prefix is not False, c.minibatch_by_group
        self.old_logprobs_from_update = c.old_logprobs_from_update
        if c.shared_prefix is True:
            roles = {
                "policy": actor,
                "reference": ref,
                **{f"reward model {k}": m for k, m in reward_models.items()},
            }
            shared_prefix.require({k: m for k, m in roles.items() if m is not None})
        self.lr, self.warmup_steps = c.lr, c.warmup_steps
        self.kl_ctl = (
            FixedKLController(c.kl_coef)
            if c.kl_target is None
            else AdaptiveKLController(c.kl_coef, target=c.kl_target, horizon=c.kl_horizon)
        )
        self.kl_estimator, self.clip_eps = c.kl_estimator, c.clip_eps
        self.ppo_epochs, self.num_minibatches, self.max_grad_norm = (
            c.ppo_epochs,
            c.num_minibatches,
            c.max_grad_norm,
        )
        self.missing_eos_penalty, self.samples_per_prompt = c.missing_eos_penalty, c.samples_per_prompt
        self.temperature, self.max_new_tokens = c.temperature, c.max_new_tokens
        self.eval_samples_per_prompt, self.seed = c.eval_samples_per_prompt, c.seed
        # the sampling distribution is the run's alone (not the checkpoint's generation_config.json)
        self.eos_ids = eos_token_ids(tokenizer, [actor])
        self.generation_config = sampling_config(
            tokenizer, self.eos_ids, c.max_new_tokens, c.temperature, c.top_k, c.top_p
        )
        self.generation = generation if generation is not None else HFGeneration()
        self._tis: Tensor | None = None  # this iteration's truncated importance-sampling weights (B, R)
        self.reward_fn: RewardFn = raw_sum
        self.reward_is_advantage = False  # the installed reward is already an advantage (GDPO)
        self._row_seeds: Tensor | None = None  # the seeds generate() samples rows from (seeded_rows)
        self.iteration = 0
        self.max_bad_batches, self.max_ratio = c.max_bad_batches, c.max_ratio
        self.skipped_batches = self.skipped_updates = self._bad_streak = 0
        self.start_metrics: dict[str, float] = {}  # the first iteration's transform telemetry (summary)

    # ---------------------------------------------------------------- the reference policy
    def sharded_models(self) -> list[nn.Module]:
        """What ``trainer=model_parallel`` shards: every network the module holds."""
        critic = getattr(self, "critic", None)
        return [m for m in (self.actor, self.ref, critic, *self.reward_models.values()) if m is not None]

    def configure_model(self) -> None:
        super().configure_model()
        if is_sharded(self.actor):  # FSDP2 loads a checkpoint before on_load_checkpoint can add the frozen
            self.strict_loading = False  # models' keys it leaves out: the trained ones are all there
            # sharing a prompt takes one forward or two depending on the rows a rank holds: the ranks'
            # forwards (each a collective) would disagree
            self.share_prefix = False

    def frozen_models(self) -> list[nn.Module]:
        return [m for m in (self.ref, *self.reward_models.values()) if m is not None]

    @contextmanager
    def reference(self) -> Iterator[PreTrainedModel]:
        """π_ref: the separate frozen copy, or, under LoRA, the actor with its adapters switched off."""
        with lora.reference(self.actor) if self.ref is None else nullcontext(self.ref) as ref:
            yield ref

    def reference_state_dict(self) -> dict[str, Tensor]:
        """π_ref's weights, under the plain model's names (what the r_ref cache is keyed on)."""
        return lora.base_weights(self.actor) if self.ref is None else self.ref.state_dict()

    def generate_reference(self, input_ids: Tensor, attention_mask: Tensor) -> Samples:
        """Responses of π_ref (see :meth:`generate`)."""
        with self.reference() as ref:
            return self.generate(ref, input_ids, attention_mask, who="reference")

    def _reference_logprobs(self, input_ids: Tensor, attention_mask: Tensor, P: int) -> Tensor:
        with self.reference() as ref:
            return self._token_logprobs(ref, input_ids, attention_mask, P)

    # ---------------------------------------------------------------- rollouts
    def generate(
        self, model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, who: str = "policy"
    ) -> Samples:
        """Sample responses of ``model`` (``who``: the ``policy`` or the ``reference``) with the generation
        engine: (sequences (B, P+R), response_mask (B, R), has_eos (B,), sampler log-probs (B, R) or None).

        Inside :meth:`seeded_rows`, row i samples from ``seeds[i]`` alone; elsewhere from torch's generator.
        """
        if self.generation.needs_sync:
            self.sync_engine(who)
        tok, config = self.tokenizer, self.generation_config
        return self.generation.generate(
            model, input_ids, attention_mask, config, tok.pad_token_id, seeds=self._row_seeds
        )

    def _token_logprobs(
        self, model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, P: int
    ) -> Tensor:
        """log π(y_t | x, y_<t) for the response tokens, (B, R), at the sampling temperature."""
        fn = shared_prefix.token_logprobs if self.share_prefix else token_logprobs
        return fn(model, input_ids, attention_mask, P, self.temperature)

    def rollout_values(self, input_ids: Tensor, attention_mask: Tensor, P: int) -> Tensor:
        """Critic values of the response positions, (B, R); zeros for the critic-free algorithms."""
        return torch.zeros(input_ids.shape[0], input_ids.shape[1] - P, device=input_ids.device)

    @torch.no_grad()
    def score(self, input_ids: Tensor, attention_mask: Tensor, P: int | None = None) -> Tensor:
        """Raw scores of every reward model, (B, M) in ``self.reward_models`` order (``P``: the prompt
        length, to compute each distinct prompt once)."""
        if not self.reward_models:
            return input_ids.new_zeros(len(input_ids), 0, dtype=torch.float32)
        if self.share_prefix and P is not None:
            fn = lambda rm: shared_prefix.sequence_scores(rm, input_ids, attention_mask, P)  # noqa: E731
        else:
            fn = lambda rm: reward_scores(rm, input_ids, attention_mask)  # noqa: E731
        return torch.stack([fn(rm) for rm in self.reward_models.values()], -1)

    @torch.no_grad()
    def all_scores(self, input_ids: Tensor, attention_mask: Tensor, prompt_ids: Tensor, P: int) -> Tensor:
        """Raw scores of every reward, (B, K) in ``reward_names`` order: the reward models' (:meth:`score`),
        then the reward functions' on the responses after position P (NaN: not applicable)."""
        scores, fns = self.score(input_ids, attention_mask, P), self.reward_functions
        args = (self.tokenizer, self.records, input_ids, attention_mask, prompt_ids, P)
        return torch.cat([scores, function_scores(fns, *args).to(scores)], -1) if fns else scores

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.reward_functions and dm is not None and hasattr(dm, "all_records"):
            self.records = {r.id: r for r in dm.all_records}  # what the functions get besides the text

    @torch.no_grad()
    def rollout(self, batch: dict, owed_by_update: bool = False) -> Rollout:
        """Sample and score a batch of prompts (× ``samples_per_prompt``). ``owed_by_update``: leave π_old of
        the first minibatch's rows to the update's forward (:mod:`lit_rlhf.training.first_forward`)."""
        ids, mask, prompt_ids = batch["input_ids"], batch["attention_mask"], batch["prompt_ids"]
        if self.samples_per_prompt > 1:  # consecutive blocks of G samples per prompt
            ids, mask, prompt_ids = (
                t.repeat_interleave(self.samples_per_prompt, 0) for t in (ids, mask, prompt_ids)
            )
        P = ids.shape[1]
        # row i of the GLOBAL batch samples from (seed, iteration, i): the same responses however sharded
        seeds = row_seeds((self.seed, self.iteration, ROLLOUT), self.shard(len(ids)).rows)  # (B,)
        with self.seeded_rows(seeds):
            seq, response_mask, has_eos, sampler_logprobs = self.generate(self.actor, ids, mask)
        full_mask = torch.cat([mask, response_mask], 1)
        owed = self.owed_rows(len(seq), seq.device) if owed_by_update else None
        return Rollout(
            prompt_ids=prompt_ids,
            input_ids=seq,
            attention_mask=full_mask,
            response_mask=response_mask,
            logprobs=self.rollout_logprobs(seq, full_mask, P, owed),
            ref_logprobs=self._reference_logprobs(seq, full_mask, P),
            values=self.rollout_values(seq, full_mask, P),
            scores=self.all_scores(seq, full_mask, prompt_ids, P),
            has_eos=has_eos,
            sampler_logprobs=sampler_logprobs,
            owed=owed,
        )

    # ---------------------------------------------------------------- training
    def optimise(self, ro: Rollout, reward: Tensor, kl: Tensor) -> dict[str, Tensor]:
        """The algorithm: advantages from the rollout, then the updates. Returns stats to log.

        Args:
            ro: the batch of rollouts.
            reward: (B,) the reward optimised (transformed and aggregated, with the missing-EOS penalty).
            kl: (B, R) per-token KL estimate ``kl_estimator`` of π_old against π_ref (0 past the EOS).
        """
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> None:
        # the randomness of iteration i is a function of (seed, i): a resumed run samples what the
        # uninterrupted one would have, whatever else consumed random numbers in between. Sampling (per
        # global row) and minibatches (per iteration) draw from their own keyed generators; the global
        # stream, seeded per rank, is left to anything else
        torch.manual_seed(self.seed * 1_000_003 + self.iteration * 7919 + self.global_rank)
        with cached_casts(self.trainer):  # bf16-mixed: each weight cast once per rollout, not per token
            ro = self.rollout(batch, owed_by_update=True)
        self.first_update_forward(ro)  # π_old of the first minibatch, from its update forward
        mask = ro.response_mask.float()

        # 0. numerical faults: a batch with NaN/inf scores, log-probs or values is skipped, not learned from
        if not self._finite_rollout(ro):
            self.iteration += 1
            self._first = None  # the first update's forward goes unused
            return

        # 1. the reward optimised: transform + aggregation (installed by RewardTransformCallback), of raw
        # scores that carry the missing-EOS penalty in reward-model units
        scores = ro.scores
        if self.missing_eos_penalty is not None:  # reward models' scores only (not a rule's probability)
            cut = (~ro.has_eos).float()[:, None] * (torch.arange(scores.shape[1]) < len(self.reward_models))
            scores = scores - self.missing_eos_penalty * cut.to(scores)  # (B, K)
        reward = self.reward_fn(scores, ro.prompt_ids, self).float()  # (B,)
        offpolicy = self.off_policy(ro, mask)

        # 2-3. the algorithm
        beta = self.kl_ctl.value
        kl = masked_kl(ro.logprobs, ro.ref_logprobs, mask, self.kl_estimator)  # (B, R), 0 past the EOS
        updates_before = self.skipped_updates
        stats = self.optimise(ro, reward, kl)
        if self.skipped_updates - updates_before < self.updates_per_iteration():  # an update was applied
            schedulers = self.lr_schedulers()
            for sch in schedulers if isinstance(schedulers, list) else [schedulers]:
                sch.step()

        # 4. KL controller and logs
        seq_kl = kl.sum(-1)  # (B,)
        B, world = len(ro.prompt_ids), self.trainer.world_size
        global_kl = self.trainer.strategy.reduce(seq_kl.mean(), reduce_op="mean")  # ranks keep one β
        self.kl_ctl.update(float(global_kl), B * world)
        self.iteration += 1
        a = self.algorithm
        logs = {k if "/" in k else f"{a}/{k}": v for k, v in stats.items()}
        logs |= {
            f"{a}/kl": seq_kl.mean(),
            f"{a}/beta": torch.tensor(beta),
            f"{a}/reward": reward.mean(),
            f"{a}/response_length": mask.sum(-1).mean(),
            f"{a}/eos_rate": ro.has_eos.float().mean(),
            f"{a}/entropy_proxy": -masked_mean(ro.logprobs, mask, all_sum=self.all_sum()),  # global batch
            f"{a}/skipped_batches": torch.tensor(float(self.skipped_batches)),
            f"{a}/skipped_updates": torch.tensor(float(self.skipped_updates)),
        } | offpolicy
        self.log_dict(logs, prog_bar=False, batch_size=B, sync_dist=True)  # DDP: mean over ranks
        self.log("kl", seq_kl.mean(), prog_bar=True, logger=False, batch_size=B)
        self.log("reward", reward.mean(), prog_bar=True, logger=False, batch_size=B)

    def updates_per_iteration(self) -> int:
        """Optimizer updates an iteration attempts (to tell a fully skipped iteration)."""
        return self.ppo_epochs * self.num_minibatches

    # ---------------------------------------------------------------- evaluation
    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        with torch.random.fork_rng(devices=[]):  # evaluation must not shift the training RNG stream
            torch.manual_seed(batch_idx)
            with cached_casts(self.trainer):
                return evaluate(self, batch)

    # ---------------------------------------------------------------- optimisation and state
    @staticmethod
    def trainable(model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only

    def configure_optimizers(self):
        opt = self.optimizer_fn(self.trainable(self.actor), lr=self.lr)
        return [opt], [warmup_schedule(opt, self.warmup_steps)]

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self.iteration == 1 and not self.start_metrics:  # what iteration 0 logged: the start of training
            self.start_metrics = {
                f"{k}_start": float(v)
                for k, v in self.trainer.callback_metrics.items()
                if k.endswith(("_above_ref", "_weight", "_margin"))
            }

    def on_train_epoch_start(self) -> None:
        for frozen in self.frozen_models():
            frozen.eval()
