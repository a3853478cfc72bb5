"""``trainer.precision=bf16-mixed`` on CPU (bf16 autocast; AMX / AVX512-BF16 CPUs multiply bf16 several times
faster than fp32): generation, the rollout forwards and the update all run in bf16, the weights and the
optimizer state stay fp32, and PPO's invariant holds — π/π_old is exactly 1 at an iteration's first update."""

from __future__ import annotations

import glob
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_ppo import ppo, sft_and_rm_paths

from lit_rlhf.models.heads import score_head
from lit_rlhf.tasks.clipping import FusedClipping


class DtypeSpy(L.Callback):
    """Records the dtype of every logits / score tensor the policy's head and the reward model produce."""

    def __init__(self) -> None:
        self.seen: dict[str, set[torch.dtype]] = {"actor": set(), "reward": set()}
        self.param_dtypes: set[torch.dtype] = set()

    def on_fit_start(self, trainer, pl_module) -> None:
        heads = {"actor": pl_module.actor.get_output_embeddings()}
        heads["reward"] = score_head(next(iter(pl_module.reward_models.values())))
        for name, module in heads.items():
            module.register_forward_hook(lambda _m, _i, out, name=name: self._record(name, out))

    def _record(self, name: str, out) -> None:
        logits = out if isinstance(out, torch.Tensor) else out.logits
        self.seen[name].add(logits.dtype)

    def on_train_end(self, trainer, pl_module) -> None:
        self.param_dtypes = {p.dtype for p in pl_module.actor.parameters()}
        self.state_dtypes = {
            v.dtype for s in trainer.optimizers[0].state.values() for v in s.values() if v.dim() > 0
        }


@pytest.mark.parametrize("task", ["grpo", "ppo"])
def test_bf16_mixed_on_cpu_computes_in_bf16_and_the_first_ratio_is_exactly_one(
    tmp_path: Path, stage_cache: Path, task: str
) -> None:
    sft, rms = sft_and_rm_paths(tmp_path / "probe", stage_cache)
    spy = DtypeSpy()
    extra = [
        f"task={task}",
        "reward=helpful",
        f"task.policy_path={sft}",
        f"reward.helpful.path={rms['helpful']}",
        "trainer.precision=bf16-mixed",
        "task.iterations=2",
        "task.module.ppo_epochs=1",
        "task.module.num_minibatches=1",  # one update per iteration: π = π_old exactly when it is taken
    ]
    trainer, _, run_dir = ppo(tmp_path, stage_cache, extra, spy=spy)
    assert trainer.precision == "bf16-mixed"
    assert spy.seen["actor"] == {torch.bfloat16}  # generation, rollout log-probs and the update
    assert spy.seen["reward"] == {torch.bfloat16}
    assert spy.param_dtypes == {torch.float32} and spy.state_dtypes == {torch.float32}  # fp32 masters
    acc = EventAccumulator(glob.glob(str(run_dir / "tensorboard" / "events.*"))[0])
    acc.Reload()
    for tag in (f"{task}/approx_kl", f"{task}/clipfrac"):
        values = [e.value for e in acc.Scalars(tag)]
        assert len(values) == 2 and values == [0.0, 0.0], (tag, values)
    kl = [e.value for e in acc.Scalars(f"{task}/kl")]
    assert all(torch.isfinite(torch.tensor(kl))), kl


class _Tiny(FusedClipping):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 8)
        self.norms: list[float] = []

    def training_step(self, batch, batch_idx):
        return (self.layer(batch[0]) * 100).pow(2).mean()  # gradients far above the clip value

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3, fused=True)
        norm = lambda: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.parameters()]))  # noqa: E731
        opt.register_step_post_hook(lambda *_: self.norms.append(float(norm())))  # closure ran: clipped grads
        return opt


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_a_fused_optimizer_clips_under_bf16_mixed_as_in_fp32(tmp_path: Path, precision: str) -> None:
    # Lightning's MixedPrecision refuses clipping with fused optimizers (a guard for fp16's scaler)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 8)), batch_size=4)
    module = _Tiny()
    trainer = L.Trainer(
        accelerator="cpu", precision=precision, gradient_clip_val=0.5, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, data)
    assert len(module.norms) == 3 and all(n == pytest.approx(0.5, rel=1e-4) for n in module.norms)
