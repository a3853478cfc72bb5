"""``trainer.precision=bf16-mixed`` on CPU (bf16 autocast; AMX / AVX512-BF16 CPUs multiply bf16 several times
faster than fp32): generation, the rollout forwards and the update all run in bf16, the weights and the
optimizer state stay fp32, and PPO's invariant holds — π/π_old is exactly 1 at an iteration's first update."""

from __future__ import annotations

import glob
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_ppo import ppo, sft_and_rm_paths

from conftest import hydra_cfg
from lit_rlhf.models.heads import score_head
from lit_rlhf.training.precision import FusedClipping, cached_casts


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


@pytest.mark.slow
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


def _casts(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")


def test_cached_casts_cast_each_weight_once_and_never_serve_a_stale_copy() -> None:
    trainer = SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cpu"))
    lin, x = torch.nn.Linear(16, 16), torch.randn(4, 16)

    def three_forwards(cached: bool):
        with cached_casts(trainer) if cached else nullcontext():
            return [lin(x) for _ in range(3)]

    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False), torch.no_grad():  # as Lightning's
        uncached = _casts(lambda: three_forwards(False))  # weight, bias and input cast at every call: 9
        cached = _casts(lambda: three_forwards(True))  # weight and bias once, the input at every call: 5
        assert (uncached, cached) == (9, 5)
        before = three_forwards(True)[0]
        lin.weight.add_(1.0)  # an optimizer step between two rollouts
        after = three_forwards(True)[0]
        assert after.dtype == torch.bfloat16
        assert torch.equal(after, lin(x))  # the new weights, not the copy cached by the first rollout
        assert not torch.equal(after, before)


def test_cached_casts_is_a_no_op_without_mixed_precision() -> None:
    trainer = SimpleNamespace(precision_plugin=Precision())
    with cached_casts(trainer):
        assert not torch.is_autocast_enabled("cpu")
    with cached_casts(None):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize(
    ("precision", "fused"),
    [("32-true", True), ("bf16-mixed", True), ("bf16-true", True), ("16-mixed", False)],
)
def test_the_shipped_adamw_is_fused_except_under_fp16_loss_scaling(tmp_path: Path, precision, fused) -> None:
    from hydra.utils import instantiate

    with hydra_cfg(tmp_path, [f"trainer.precision={precision}"]) as cfg:
        opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.ones(2))], lr=1e-3)
    assert opt.defaults["fused"] is fused


@pytest.mark.slow
def test_cached_casts_change_nothing_a_llama_rollout_computes(tmp_path: Path) -> None:
    """A tiny random Llama (pad = eos, chat template): under bf16 autocast the cached casts sample the same
    responses and give the same log-probs as casting at every call (what Lightning's autocast does)."""
    from tiny_hf import make_model_folder
    from transformers import AutoModelForCausalLM

    from lit_rlhf.models import load_tokenizer
    from lit_rlhf.rollout.rollout import eos_token_ids, generate, sampling_config, token_logprobs

    folder = make_model_folder("llama", tmp_path / "llama")
    tok, model = load_tokenizer(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    assert tok.pad_token_id == tok.eos_token_id
    config = sampling_config(tok, eos_token_ids(tok, [model]), max_new_tokens=8, temperature=1.0)
    chat = [[{"role": "user", "content": "hi there"}]] * 3
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids  # (3, P)
    mask, seeds = torch.ones_like(ids), torch.tensor([1, 2, 3])
    trainer = SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cpu"))

    def rollout(cached: bool):
        lightning_autocast = torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)
        with lightning_autocast, cached_casts(trainer) if cached else nullcontext():
            seq, _, _ = generate(model, ids, mask, config, tok.pad_token_id, seeds)
            return seq, token_logprobs(model, seq, torch.ones_like(seq), ids.shape[1], 1.0)

    (seq_a, lp_a), (seq_b, lp_b) = rollout(False), rollout(True)
    assert torch.equal(seq_a, seq_b) and torch.equal(lp_a, lp_b)
    assert _casts(lambda: rollout(True)) < _casts(lambda: rollout(False))
