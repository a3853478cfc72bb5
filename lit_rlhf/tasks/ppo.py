"""PPO policy optimisation (``task=ppo``) with manual optimization.

One training step = one PPO iteration on a batch of prompts:

1. roll out: generate responses with the KV cache (left-padded prompts);
2. score: log-probs of the policy and the frozen reference, values of the critic, and the RAW score of
   every reward model — nothing more. The reward PPO optimises comes from ``self.reward_fn``, which the
   ``RewardTransformCallback`` installs (transform per reward model, then aggregation);
3. per-token rewards ``−β·KL_t`` plus the sequence reward at the last token; GAE advantages and returns;
4. ``ppo_epochs`` passes over minibatches of the clipped policy loss and the clipped value loss.

The objective is the paper's ``E[u(x, y)] − β·KL(π‖π_ref)`` with u the transformed reward.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import lightning as L
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from lit_rlhf.models import lora
from lit_rlhf.models.scoring import reward_scores
from lit_rlhf.optim import warmup_schedule
from lit_rlhf.rlhf import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_penalty,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    ppo_policy_loss,
    value_loss,
)
from lit_rlhf.tasks.evaluation import evaluate
from lit_rlhf.tasks.rollout import Rollout, eos_token_ids, generate, sampling_config, token_logprobs

log = logging.getLogger(__name__)
RewardFn = Callable[[Tensor, Tensor, "PPOModule"], Tensor]


def raw_sum(scores: Tensor, prompt_ids: Tensor, module: PPOModule) -> Tensor:
    """Default reward when no callback installs one: the sum of raw reward-model scores."""
    return scores.sum(-1)


def disable_dropout(model: nn.Module) -> None:
    """PPO's ratio π/π_old must be 1 before any update: no dropout anywhere (as TRL and OpenRLHF do)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


class PPOModule(L.LightningModule):
    """Actor-critic PPO against frozen reward models and a frozen reference policy.

    Args:
        actor: the policy, a causal LM initialised from the SFT model.
        critic: value model (:class:`~lit_rlhf.models.heads.ValueModel`: a backbone and a linear head).
        ref: frozen reference policy π_ref (the SFT model) for the KL term; ``None`` when the actor is a
            LoRA model (``lora=…``): π_ref is then the actor with its adapters off (no second copy).
        reward_models: name → frozen reward model (``*ForSequenceClassification``, one label).
        tokenizer: shared by all models (its pad and eos ids are used).
        optimizer: partial optimizer (the ``optimizer/`` group), used for actor and critic.
        lr: actor learning rate.
        value_lr: critic learning rate.
        warmup_steps: linear warm-up, in PPO iterations.
        kl_coef: initial KL coefficient β.
        kl_target: target KL per sequence for the adaptive controller; ``None`` = fixed β.
        kl_horizon: horizon of the adaptive controller (Ziegler et al., 2019).
        kl_estimator: ``k1`` (log π − log π_ref), ``k2`` or ``k3`` per token.
        gamma: discount of GAE.
        lam: λ of GAE.
        clip_eps: PPO ratio clip ε.
        value_clip_eps: value clip ε.
        vf_coef: weight of the value loss.
        ppo_epochs: passes over each batch of rollouts.
        num_minibatches: minibatches per pass.
        max_grad_norm: gradient clipping (``None`` = off).
        missing_eos_penalty: subtracted from the reward of responses cut without EOS (``None`` = off).
        samples_per_prompt: responses sampled per prompt in a step.
        max_new_tokens: response length cap.
        temperature: sampling temperature (log-probs are taken at the same temperature).
        top_k: must stay 0: top-k truncation would make the ratio off-policy (refused).
        top_p: must stay 1.0, for the same reason (refused).
        eval_samples_per_prompt: responses per held-out prompt at evaluation.
        seed: seeds the sampling of each iteration (with the iteration number).
        max_bad_batches: stop after this many consecutive batches with NaN/inf scores, log-probs or values
            (each one is skipped and counted in ``ppo/skipped_batches``).
        max_ratio: skip a minibatch's policy update when max π/π_old exceeds this (ratio explosion);
            counted in ``ppo/skipped_updates``.
    """

    def __init__(
        self,
        actor: PreTrainedModel,
        critic: PreTrainedModel,
        ref: PreTrainedModel | None,
        reward_models: dict[str, PreTrainedModel],
        tokenizer,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr: float = 3e-5,
        value_lr: float = 1e-4,
        warmup_steps: int = 0,
        kl_coef: float = 0.05,
        kl_target: float | None = None,
        kl_horizon: int = 10000,
        kl_estimator: str = "k1",
        gamma: float = 1.0,
        lam: float = 0.95,
        clip_eps: float = 0.2,
        value_clip_eps: float = 0.2,
        vf_coef: float = 0.5,
        ppo_epochs: int = 2,
        num_minibatches: int = 2,
        max_grad_norm: float | None = 1.0,
        missing_eos_penalty: float | None = None,
        samples_per_prompt: int = 1,
        max_new_tokens: int = 16,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eval_samples_per_prompt: int = 4,
        seed: int = 0,
        max_bad_batches: int = 3,
        max_ratio: float = 100.0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # frozen models are not stored in checkpoints
        if not reward_models:
            raise ValueError("task=ppo needs at least one reward model (the `reward` group)")
        if ref is None and not lora.is_lora(actor):
            raise ValueError("PPOModule needs a reference policy: pass ref, or a LoRA actor (lora=…)")
        self.actor, self.critic, self.ref = actor, critic, ref
        self.reward_models = nn.ModuleDict(reward_models)
        self.reward_names = list(reward_models)
        for frozen in self.frozen_models():
            frozen.requires_grad_(False).eval()
        for m in (self.actor, self.critic, self.ref):
            if m is not None:
                disable_dropout(m)
        self.tokenizer, self.optimizer_fn = tokenizer, optimizer
        self.lr, self.value_lr, self.warmup_steps = lr, value_lr, warmup_steps
        self.kl_ctl = (
            FixedKLController(kl_coef)
            if kl_target is None
            else AdaptiveKLController(kl_coef, target=kl_target, horizon=kl_horizon)
        )
        self.kl_estimator, self.gamma, self.lam = kl_estimator, gamma, lam
        self.clip_eps, self.value_clip_eps, self.vf_coef = clip_eps, value_clip_eps, vf_coef
        self.ppo_epochs, self.num_minibatches, self.max_grad_norm = ppo_epochs, num_minibatches, max_grad_norm
        self.missing_eos_penalty, self.samples_per_prompt = missing_eos_penalty, samples_per_prompt
        self.temperature = temperature
        self.eval_samples_per_prompt, self.seed = eval_samples_per_prompt, seed
        # the sampling distribution is the run's alone (not the checkpoint's generation_config.json)
        self.eos_ids = eos_token_ids(tokenizer, [actor])
        self.generation_config = sampling_config(
            tokenizer, self.eos_ids, max_new_tokens, temperature, top_k, top_p
        )
        self.reward_fn: RewardFn = raw_sum
        self.iteration = 0
        self.max_bad_batches, self.max_ratio = max_bad_batches, max_ratio
        self.skipped_batches = self.skipped_updates = self._bad_streak = 0

    # ---------------------------------------------------------------- the reference policy
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

    def generate_reference(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Responses of π_ref (see :meth:`generate`)."""
        with self.reference() as ref:
            return self.generate(ref, input_ids, attention_mask)

    def _reference_logprobs(self, input_ids: Tensor, attention_mask: Tensor, P: int) -> Tensor:
        with self.reference() as ref:
            return self._token_logprobs(ref, input_ids, attention_mask, P)

    # ---------------------------------------------------------------- rollouts
    def generate(
        self, model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sample responses; returns (sequences (B, P+R), response_mask (B, R), has_eos (B,))."""
        return generate(model, input_ids, attention_mask, self.generation_config, self.tokenizer.pad_token_id)

    def _token_logprobs(
        self, model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, P: int
    ) -> Tensor:
        """log π(y_t | x, y_<t) for the response tokens, (B, R), at the sampling temperature."""
        return token_logprobs(model, input_ids, attention_mask, P, self.temperature)

    def _values(self, input_ids: Tensor, attention_mask: Tensor, P: int) -> Tensor:
        return self.critic(input_ids, attention_mask)[:, P - 1 : -1]  # (B, R)

    @torch.no_grad()
    def score(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Raw scores of every reward model, (B, K) in ``self.reward_names`` order."""
        return torch.stack(
            [reward_scores(rm, input_ids, attention_mask) for rm in self.reward_models.values()], -1
        )

    @torch.no_grad()
    def rollout(self, batch: dict) -> Rollout:
        ids, mask, prompt_ids = batch["input_ids"], batch["attention_mask"], batch["prompt_ids"]
        if self.samples_per_prompt > 1:
            ids, mask, prompt_ids = (
                t.repeat_interleave(self.samples_per_prompt, 0) for t in (ids, mask, prompt_ids)
            )
        P = ids.shape[1]
        seq, response_mask, has_eos = self.generate(self.actor, ids, mask)
        full_mask = torch.cat([mask, response_mask], 1)
        return Rollout(
            prompt_ids=prompt_ids,
            input_ids=seq,
            attention_mask=full_mask,
            response_mask=response_mask,
            logprobs=self._token_logprobs(self.actor, seq, full_mask, P),
            ref_logprobs=self._reference_logprobs(seq, full_mask, P),
            values=self._values(seq, full_mask, P),
            scores=self.score(seq, full_mask),
            has_eos=has_eos,
        )

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> None:
        # the randomness of iteration i is a function of (seed, i, rank): a resumed run samples what the
        # uninterrupted one would have, whatever else consumed random numbers in between
        torch.manual_seed(self.seed * 1_000_003 + self.iteration * 7919 + self.global_rank)
        ro = self.rollout(batch)
        mask = ro.response_mask.float()
        P = ro.input_ids.shape[1] - mask.shape[1]

        # 0. numerical faults: a batch with NaN/inf scores, log-probs or values is skipped, not learned from
        if not self._finite_rollout(ro):
            self.iteration += 1
            return

        # 1. the reward PPO optimises: transform + aggregation (installed by RewardTransformCallback)
        reward = self.reward_fn(ro.scores, ro.prompt_ids, self).float()  # (B,)
        if self.missing_eos_penalty is not None:
            reward = reward - self.missing_eos_penalty * (~ro.has_eos).float()

        # 2. per-token KL penalty, GAE, whitening
        beta = self.kl_ctl.value
        kl = kl_penalty(ro.logprobs, ro.ref_logprobs, self.kl_estimator)  # (B, R)
        token_rewards = per_token_rewards(reward, kl, beta, mask)  # (B, R)
        advantages, returns = gae(token_rewards, ro.values, mask, self.gamma, self.lam)
        advantages = masked_whiten(advantages, mask)

        # 3. epochs of minibatches of the clipped losses
        opt_actor, opt_critic = self.optimizers()
        B = len(ro.prompt_ids)
        mb = math.ceil(B / self.num_minibatches)
        stats: dict[str, list[Tensor]] = {
            "clipfrac": [],
            "approx_kl": [],
            "vf_clipfrac": [],
            "pg_loss": [],
            "vf_loss": [],
        }
        for _ in range(self.ppo_epochs):
            for idx in torch.randperm(B, device=mask.device).split(mb):
                ids, am, m = ro.input_ids[idx], ro.attention_mask[idx], mask[idx]
                logprobs = self._token_logprobs(self.actor, ids, am, P)
                pg_loss, pg_stats = ppo_policy_loss(
                    logprobs, ro.logprobs[idx], advantages[idx], m, self.clip_eps
                )
                values = self._values(ids, am, P)
                vf_loss, vf_stats = value_loss(values, ro.values[idx], returns[idx], m, self.value_clip_eps)
                # a ratio explosion (π/π_old beyond max_ratio) or a non-finite loss skips that update, on
                # every rank at once (under DDP the replicas must take the same steps)
                finite_ratio = torch.isfinite(pg_loss) & (pg_stats["ratio_max"] <= self.max_ratio)
                pg_ok = self._all_ranks(bool(finite_ratio))
                vf_ok = self._all_ranks(bool(torch.isfinite(vf_loss)))
                self.skipped_updates += (not pg_ok) + (not vf_ok)
                if pg_ok or vf_ok:
                    self._update((opt_actor, pg_loss, pg_ok), (opt_critic, self.vf_coef * vf_loss, vf_ok))
                for k, v in {**pg_stats, **vf_stats, "pg_loss": pg_loss, "vf_loss": vf_loss}.items():
                    if k in stats:
                        stats[k].append(v.detach().float())
        for sch in self.lr_schedulers():
            sch.step()

        # 4. KL controller and logs
        seq_kl = (kl * mask).sum(-1)  # (B,)
        world = self.trainer.world_size
        global_kl = self.trainer.strategy.reduce(seq_kl.mean(), reduce_op="mean")  # ranks keep one β
        self.kl_ctl.update(float(global_kl), B * world)
        self.iteration += 1
        log = {f"ppo/{k}": torch.stack(v).mean() for k, v in stats.items() if v}
        log |= {
            "ppo/kl": seq_kl.mean(),
            "ppo/beta": torch.tensor(beta),
            "ppo/reward": reward.mean(),
            "ppo/response_length": mask.sum(-1).mean(),
            "ppo/eos_rate": ro.has_eos.float().mean(),
            "ppo/entropy_proxy": -masked_mean(ro.logprobs, mask),
            "train/loss": log_total(stats, self.vf_coef),
            "ppo/skipped_batches": torch.tensor(float(self.skipped_batches)),
            "ppo/skipped_updates": torch.tensor(float(self.skipped_updates)),
        }
        self.log_dict(log, prog_bar=False, batch_size=B, sync_dist=True)  # DDP: mean over ranks
        self.log("ppo/kl_pb", seq_kl.mean(), prog_bar=True, logger=False, batch_size=B)
        self.log("reward", reward.mean(), prog_bar=True, logger=False, batch_size=B)

    def _all_ranks(self, ok: bool) -> bool:
        """True only if ``ok`` on every process (a single process: ``ok``)."""
        return bool(self.trainer.strategy.reduce_boolean_decision(ok, all=True))

    def _update(self, *parts: tuple[torch.optim.Optimizer, Tensor, bool]) -> None:
        """One backward of the summed losses, then a (clipped) step of each optimizer whose loss is ok.

        Actor and critic share no parameter, so the gradient of the sum is each loss's own gradient:
        the same update as one backward per loss, with one all-reduce under DDP in which every trained
        parameter takes part. A skipped loss enters with weight 0 (its gradient is zeroed, not applied).
        """
        for opt, _, _ in parts:
            opt.zero_grad()
        total = sum(loss if ok else loss.nan_to_num() * 0.0 for _, loss, ok in parts)
        self.manual_backward(total)
        for opt, _, ok in parts:
            if not ok:
                continue
            if self.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()

    def _finite_rollout(self, ro: Rollout) -> bool:
        """Fault policy: skip a batch whose scores, log-probs or values are not finite; stop after
        ``max_bad_batches`` such batches in a row with an error that says where the NaNs came from."""
        checks = {
            "reward-model scores": ro.scores,
            "policy log-probs": ro.logprobs,
            "reference log-probs": ro.ref_logprobs,
            "critic values": ro.values,
        }
        bad = {k: int((~torch.isfinite(v)).sum()) for k, v in checks.items()}
        bad = {k: n for k, n in bad.items() if n}
        if self._all_ranks(not bad):  # under DDP a batch bad on one rank is skipped on all
            self._bad_streak = 0
            return True
        self.skipped_batches += 1
        self._bad_streak += 1
        what = ", ".join(f"{n} non-finite {k}" for k, n in bad.items()) or "non-finite values on another rank"
        log.warning("PPO iteration %d skipped: %s (%d in a row)", self.iteration, what, self._bad_streak)
        if self._bad_streak >= self.max_bad_batches:
            raise FloatingPointError(
                f"{self._bad_streak} consecutive PPO batches had non-finite values ({what}); stopping "
                "instead of training on them. Check the reward models (reward.<name>.path) and the "
                "learning rate (task.module.lr); raise task.module.max_bad_batches to tolerate more."
            )
        self.log("ppo/skipped_batches", float(self.skipped_batches), batch_size=len(ro.scores))
        return False

    # ---------------------------------------------------------------- evaluation
    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        with torch.random.fork_rng(devices=[]):  # evaluation must not shift the training RNG stream
            torch.manual_seed(batch_idx)
            return evaluate(self, batch)

    # ---------------------------------------------------------------- optimisation and state
    def configure_optimizers(self):
        trainable = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731  (LoRA: adapters)
        opt_a = self.optimizer_fn(trainable(self.actor), lr=self.lr)
        opt_c = self.optimizer_fn(trainable(self.critic), lr=self.value_lr)
        return [opt_a, opt_c], [
            warmup_schedule(opt_a, self.warmup_steps),
            warmup_schedule(opt_c, self.warmup_steps),
        ]

    def on_train_epoch_start(self) -> None:
        for frozen in self.frozen_models():
            frozen.eval()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # only what training changes: frozen models and (under LoRA) the frozen base are rebuilt on load
        frozen = {n for n, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}
        checkpoint["state_dict"] = {
            k: v
            for k, v in checkpoint["state_dict"].items()
            if k not in frozen and not k.startswith(("ref.", "reward_models."))
        }
        checkpoint["kl_controller"] = self.kl_ctl.state_dict()
        checkpoint["ppo_iteration"] = self.iteration

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = [k for k in ("kl_controller", "ppo_iteration") if k not in checkpoint]
        if missing:
            raise ValueError(
                f"this checkpoint was not written by task=ppo (it lacks {missing}); check ckpt_path"
            )
        self.kl_ctl.load_state_dict(checkpoint["kl_controller"])
        self.iteration = checkpoint["ppo_iteration"]


def log_total(stats: dict[str, list[Tensor]], vf_coef: float) -> Tensor:
    """Mean policy loss + vf_coef · mean value loss over the iteration's minibatches."""
    mean = lambda k: torch.stack(stats[k]).mean() if stats[k] else torch.tensor(0.0)  # noqa: E731
    return mean("pg_loss") + vf_coef * mean("vf_loss")
