"""LoRA (PEFT) PPO on the tiny world: π_ref is the actor with adapters off (no second copy of the policy),
only adapters train, checkpoints hold only what trains and resume, the saved policy is merged and loads
with plain transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import CONF, TINY_STAGES, TINY_WORLD, hydra_cfg
from lit_rlhf.models import lora
from lit_rlhf.run.pipeline import ensure_stage

pytest.importorskip("peft")

LORA_PPO = [
    "lora=default",
    "lora.r=4",
    "task.module.lr=1e-3",  # adapters start at B = 0: a larger step so 3 iterations move the policy visibly
    "task.iterations=3",
    "task.val_check_interval=3",
    "task.checkpoint_every_n_steps=1",  # in iterations: one checkpoint per iteration
    "logger=none",
]


def unique_numel(params) -> int:
    """Elements of distinct storages (tied or shared weights counted once)."""
    seen: dict[int, int] = {}
    for p in params:
        seen[p.untyped_storage().data_ptr()] = p.numel()
    return sum(seen.values())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, stage_cache: Path):
    from test_ppo import ppo  # the PPO runner of the end-to-end tests

    tmp = tmp_path_factory.mktemp("lora")
    trainer, _, run_dir = ppo(tmp, stage_cache, LORA_PPO)
    with hydra_cfg(tmp / "probe", [*TINY_WORLD, *TINY_STAGES], cache=stage_cache) as cfg:
        sft_path = ensure_stage(cfg, "sft")
    return trainer.lightning_module, run_dir, AutoModelForCausalLM.from_pretrained(sft_path).eval()


@pytest.mark.slow
def test_reference_is_the_base_without_a_second_copy(lora_run) -> None:
    module, _, sft = lora_run
    assert module.ref is None and lora.is_lora(module.actor)
    # every parameter of the module: actor (base + adapters), critic, reward models — and nothing else
    parts = [module.actor, module.critic, *module.reward_models.values()]
    assert unique_numel(module.parameters()) == sum(unique_numel(m.parameters()) for m in parts)
    adapters = sum(p.numel() for n, p in module.actor.named_parameters() if "lora_" in n)
    assert unique_numel(module.actor.parameters()) == unique_numel(sft.parameters()) + adapters
    assert adapters < 0.1 * unique_numel(sft.parameters())

    # π_ref's log-probs are the SFT model's on the same sequences; the trained policy's are not
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, sft.config.vocab_size, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    P = 5
    with torch.no_grad():
        ref_lp = module._reference_logprobs(ids, mask, P)
        sft_lp = module._token_logprobs(sft, ids, mask, P)
        policy_lp = module._token_logprobs(module.actor, ids, mask, P)
    torch.testing.assert_close(ref_lp, sft_lp)
    assert not torch.allclose(policy_lp, sft_lp, atol=1e-4)


@pytest.mark.slow
def test_only_adapters_train(lora_run) -> None:
    module, _, sft = lora_run
    sft_state = sft.state_dict()
    base = lora.base_weights(module.actor)
    assert base.keys() == sft_state.keys()
    for k, v in base.items():
        assert torch.equal(v, sft_state[k]), f"base weight {k} changed"
    trained = {n for n, p in module.actor.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    lora_b = [p for n, p in module.actor.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "PPO did not change the adapters (B starts at 0)"


@pytest.mark.slow
def test_checkpoint_holds_only_what_trains(lora_run) -> None:
    _, run_dir, _ = lora_run
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    actor_keys = [k for k in ckpt["state_dict"] if k.startswith("actor.")]
    assert actor_keys and all("lora_" in k for k in actor_keys)
    assert any(k.startswith("critic.") for k in ckpt["state_dict"])
    assert not any(k.startswith(("ref.", "reward_models.")) for k in ckpt["state_dict"])


@pytest.mark.slow
def test_saved_policy_is_merged_and_loads(lora_run) -> None:
    module, run_dir, sft = lora_run
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    assert not lora.is_lora(model)
    assert not (run_dir / "model" / "adapter_config.json").exists()
    ids = torch.randint(3, sft.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        saved_lp = module._token_logprobs(model, ids, mask, 4)
        policy_lp = module._token_logprobs(module.actor, ids, mask, 4)
        sft_lp = module._token_logprobs(sft, ids, mask, 4)
    torch.testing.assert_close(saved_lp, policy_lp, atol=1e-5, rtol=1e-4)  # merged = base + adapters
    assert not torch.allclose(saved_lp, sft_lp, atol=1e-4)
    assert lora.is_lora(module.actor)  # merging worked on a copy


@pytest.mark.slow
def test_lora_resume_equals_uninterrupted(tmp_path: Path, stage_cache: Path, lora_run) -> None:
    """A LoRA checkpoint (adapters + critic, no base) restores the run: it ends where the uninterrupted
    run of the same command (``lora_run``) ends."""
    from test_ppo import ppo
    from test_resume import Crash

    full = lora_run[0]
    with pytest.raises(SystemError):
        ppo(tmp_path / "crashed", stage_cache, LORA_PPO, Crash(at=2))
    ckpt = torch.load(tmp_path / "crashed" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["ppo_iteration"] == 2  # the last checkpoint before the crash (one per iteration)
    resumed = ppo(tmp_path / "crashed", stage_cache, LORA_PPO)[0].lightning_module
    assert resumed.iteration == full.iteration == 3
    for (name, a), b in zip(full.actor.state_dict().items(), resumed.actor.state_dict().values()):
        assert torch.equal(a, b), f"actor weight {name} differs after resume"


def test_lora_config_composes(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    with hydra_cfg(tmp_path, ["lora=default", "lora.target_modules=[c_attn]"]) as cfg:
        spec = instantiate(cfg.lora)
    assert (spec.r, spec.alpha, spec.target_modules) == (8, 16, ["c_attn"])
    assert (CONF / "lora" / "default.yaml").is_file()
    with pytest.raises(ValueError, match="lora.r"):
        lora.LoRA(r=0)
