"""What a policy task's checkpoint holds, as a mixin of :class:`~lit_rlhf.tasks.policy.PolicyModule`: only
what training changes (the trained weights, the KL controller, the iteration, the fault counters, the first
iteration's telemetry); the frozen models (π_ref, the reward models, under LoRA the frozen base) are left out
on save and taken from the module on load, so strict loading still fails on any other missing key.

The host module provides ``kl_ctl``, ``iteration``, ``algorithm``, ``start_metrics``, ``generation``,
``fault_state`` / ``load_fault_state`` and the LightningModule's ``state_dict`` / ``named_parameters``.
"""

from __future__ import annotations


class PolicyState:
    """``on_save_checkpoint`` / ``on_load_checkpoint`` of the policy tasks."""

    def frozen_keys(self) -> set[str]:
        """State-dict keys that checkpoints leave out: π_ref, the reward models and (LoRA) the frozen base."""
        frozen = {n for n, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}
        return {k for k in self.state_dict() if k in frozen or k.startswith(("ref.", "reward_models."))}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # only what training changes: frozen models and (under LoRA) the frozen base are rebuilt on load
        frozen = self.frozen_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        checkpoint["kl_controller"] = self.kl_ctl.state_dict()
        checkpoint["ppo_iteration"] = self.iteration
        checkpoint["algorithm"] = self.algorithm
        checkpoint["start_metrics"] = self.start_metrics
        checkpoint["fault_policy"] = self.fault_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = [k for k in ("kl_controller", "ppo_iteration") if k not in checkpoint]
        if missing:
            raise ValueError(
                f"this checkpoint was not written by task={self.algorithm} (it lacks {missing}); "
                "check ckpt_path"
            )
        if checkpoint.get("algorithm", "ppo") != self.algorithm:
            raise ValueError(
                f"this checkpoint was written by task={checkpoint.get('algorithm', 'ppo')}, not "
                f"task={self.algorithm}; check ckpt_path"
            )
        self.kl_ctl.load_state_dict(checkpoint["kl_controller"])
        if self.generation.needs_sync:  # the restored actor is pushed before the first rollout
            self.generation.holds = None
        self.iteration = checkpoint["ppo_iteration"]
        # the frozen models were left out on save: take them from this module, so that strict loading
        # fails on any OTHER missing or unexpected key (a real mismatch). FSDP2 has loaded the weights
        # already, non-strictly (configure_model), and removed them from the checkpoint
        if "state_dict" in checkpoint:
            own = self.state_dict()
            for key in self.frozen_keys():
                checkpoint["state_dict"].setdefault(key, own[key])
        self.start_metrics = dict(checkpoint.get("start_metrics") or {})
        self.load_fault_state(checkpoint.get("fault_policy"))
