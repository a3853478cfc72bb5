"""Real-checkpoint behaviour on tiny random models of several families (tests/tiny_hf.py).

Where scores are read, a critic for any architecture, a sampling distribution the checkpoint cannot
change, several EOS ids, response-only logits, and model settings that reach every PPO role.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_hf import make_model_folder, make_tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    OPTConfig,
    OPTForCausalLM,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES

from conftest import hydra_cfg
from lit_rlhf.models import ValueModel, sequence_scores
from lit_rlhf.models.heads import last_index
from lit_rlhf.rollout.rollout import (
    eos_token_ids,
    generate,
    pinned_generation,
    sampling_config,
    token_logprobs,
)


def rm_folder(family: str, tmp: Path, seed: int = 1) -> Path:
    """A reward-model folder (``*ForSequenceClassification``) of ``family``, sharing its tokenizer."""
    base = make_model_folder(family, tmp / f"{family}-base", seed=seed)
    torch.manual_seed(seed)
    rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    out = tmp / f"{family}-rm"
    rm.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


# ------------------------------------------------------------------ where scores are read
def test_reward_is_read_at_the_eos_not_where_pad_id_says(tmp_path: Path) -> None:
    """With pad = eos (SmolLM2), transformers' own pooling reads the token BEFORE the EOS; we read the EOS,
    the last attended token, whatever the padding side."""
    folder = rm_folder("llama", tmp_path)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.pad_token_id == tok.eos_token_id
    rm = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    body = tok("How do I boil an egg? Put it in water.", add_special_tokens=False).input_ids
    seq = [*body, tok.eos_token_id]
    pad = tok.pad_token_id
    right = torch.tensor([seq + [pad, pad]])
    right_mask = torch.tensor([[1] * len(seq) + [0, 0]])
    left = torch.tensor([[pad, pad] + seq])
    left_mask = torch.tensor([[0, 0] + [1] * len(seq)])
    with torch.no_grad():
        hidden = rm.model(input_ids=right, attention_mask=right_mask).last_hidden_state
        at_eos = rm.score(hidden[0, len(seq) - 1])[0]
        before_eos = rm.score(hidden[0, len(seq) - 2])[0]
        ours_right = sequence_scores(rm, right, right_mask)
        ours_left = sequence_scores(rm, left, left_mask)
        theirs = rm(input_ids=right, attention_mask=right_mask).logits[0, 0]
    torch.testing.assert_close(ours_right[0], at_eos, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_left, ours_right, rtol=1e-4, atol=1e-4)  # left padding: same score
    torch.testing.assert_close(theirs, before_eos, rtol=1e-5, atol=1e-5)  # what we avoid
    assert not torch.isclose(theirs, at_eos, atol=1e-4)


def test_last_index_of_left_and_right_masks() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_index(mask).tolist() == [2, 4, 0]


# ------------------------------------------------------------------ a critic for every architecture
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox", "gpt2", "opt"])
def test_value_model_on_any_causal_lm_family(tmp_path: Path, family: str) -> None:
    if family == "opt":  # OPT has no *ForTokenClassification: the critic must not need one
        assert "opt" not in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES
        tok = make_tokenizer("gpt2")
        cfg = OPTConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
            word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=tok.eos_token_id,
        )  # fmt: skip
        folder = tmp_path / "opt"
        OPTForCausalLM(cfg).save_pretrained(folder)
    else:
        folder = make_model_folder(family, tmp_path / family)
    critic = ValueModel.from_pretrained(str(folder))
    ids = torch.randint(3, 100, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    values = critic(ids, mask)
    assert values.shape == (3, 7) and values.dtype == torch.float32
    values[mask.bool()].sum().backward()
    assert critic.head.weight.grad is not None and critic.head.weight.grad.abs().sum() > 0
    grads = [p.grad for p in critic.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_critic_from_reward_model_starts_with_its_score(tmp_path: Path) -> None:
    rm = AutoModelForSequenceClassification.from_pretrained(rm_folder("qwen2", tmp_path)).eval()
    critic = ValueModel.from_reward_model(rm).eval()
    ids, mask = torch.randint(3, 100, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(critic(ids, mask)[:, -1], sequence_scores(rm, ids, mask))


# ------------------------------------------------------------------ sampling the run chose, nothing else
SHIPPED = {
    "do_sample": True,
    "repetition_penalty": 3.0,
    "no_repeat_ngram_size": 1,
    "top_k": 5,
    "min_p": 0.3,
    "temperature": 0.2,
}


def _sample_with_scores(model, ids, mask, config, pin: bool):
    config = config.copy() if hasattr(config, "copy") else config
    config.return_dict_in_generate, config.output_scores, config.output_logits = True, True, True
    if pin:
        with pinned_generation(model):
            return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)


def test_checkpoint_generation_config_does_not_change_the_rollout_distribution(tmp_path: Path) -> None:
    """A folder whose generation_config.json ships a repetition penalty, no-repeat n-grams, top-k, min-p and
    a temperature: rollouts are still sampled from softmax(logits / T) of the run's T — exactly the
    distribution PPO's log-probs are taken under, so the first ratio π/π_old is 1 for the right reason."""
    folder = make_model_folder("qwen2", tmp_path / "q", generation_config=SHIPPED)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.generation_config.repetition_penalty == 3.0  # the checkpoint really ships it
    T = 0.7
    config = sampling_config(tok, eos_token_ids(tok, [model]), max_new_tokens=6, temperature=T)
    ids = torch.tensor([tok("How do I boil an egg?").input_ids] * 4)
    mask = torch.ones_like(ids)

    torch.manual_seed(0)
    out = _sample_with_scores(model, ids, mask, config, pin=True)
    for step, (scores, logits) in enumerate(zip(out.scores, out.logits)):
        torch.testing.assert_close(scores, logits / T, msg=f"step {step}: a logits processor acted")
    # the log-probs PPO uses equal the sampling distribution's, token for token
    P = ids.shape[1]
    seq = out.sequences
    full = torch.ones_like(seq)
    with torch.no_grad():
        ours = token_logprobs(model, seq, full, P, T)  # (B, R)
    sampled = torch.stack(
        [torch.log_softmax(s, -1).gather(-1, seq[:, P + t, None])[:, 0] for t, s in enumerate(out.scores)], 1
    )
    torch.testing.assert_close(ours, sampled, rtol=1e-4, atol=1e-4)

    # control: without pinning, the checkpoint's processors do act (the test can fail)
    torch.manual_seed(0)
    leaky = _sample_with_scores(model, ids, mask, config, pin=False)
    assert any(not torch.allclose(s, lg / T, atol=1e-5) for s, lg in zip(leaky.scores, leaky.logits))
    assert model.generation_config.repetition_penalty == 3.0  # pinning only lends a config for the call


@pytest.mark.parametrize(("key", "value"), [("top_k", 50), ("top_p", 0.9)])
def test_truncated_sampling_is_refused_naming_the_key(key: str, value: float) -> None:
    tok = make_tokenizer("gpt2")
    with pytest.raises(ValueError, match=f"task.module.{key}"):
        sampling_config(tok, [tok.eos_token_id], 8, 1.0, **{key: value})


def test_every_eos_id_ends_a_response(tmp_path: Path) -> None:
    """A generation config listing two EOS ids (Qwen2.5: <|im_end|> and <|endoftext|>): either one ends it."""
    folder = make_model_folder("qwen2", tmp_path / "q")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    other = tok.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.eos_token_id = [tok.eos_token_id, other]
    ids = eos_token_ids(tok, [model])
    assert ids == [tok.eos_token_id, other]

    class Scripted(torch.nn.Module):  # "generates" fixed continuations
        def generate(self, input_ids, attention_mask, generation_config, **kwargs):
            cont = torch.tensor([[5, other, 7, 8], [5, 6, tok.eos_token_id, 8], [5, 6, 7, 8]])
            return torch.cat([input_ids, cont], 1)

    config = sampling_config(tok, ids, 4, 1.0)
    prompt = torch.ones(3, 2, dtype=torch.long)
    seq, rmask, has_eos = generate(Scripted(), prompt, prompt, config, tok.pad_token_id)
    assert rmask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, False]
    assert seq[0, 4:].tolist() == [tok.pad_token_id] * 2  # after the EOS: padding


# ------------------------------------------------------------------ only the response's logits
def test_token_logprobs_compute_only_response_logits(tmp_path: Path) -> None:
    folder = make_model_folder("llama", tmp_path / "l")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    B, P, R = 2, 9, 4
    ids = torch.randint(3, 100, (B, P + R))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    shapes = []
    handle = model.lm_head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        ours = token_logprobs(model, ids, mask, P, temperature=0.5)
    handle.remove()
    assert shapes == [(B, R + 1, model.config.vocab_size)]  # not (B, P + R, V)
    with torch.no_grad():
        from lit_rlhf.models import position_ids

        full = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    expected = torch.log_softmax(full[:, P - 1 : -1] / 0.5, -1).gather(-1, ids[:, P:, None])[..., 0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ settings reach every PPO role
def _ppo_models(tmp: Path, *overrides: str):
    from lit_rlhf.run.pipeline import ppo_models

    policy = make_model_folder("llama", tmp / "policy")
    rm = rm_folder("llama", tmp)
    with hydra_cfg(tmp, ["model=hf", f"model.name_or_path={policy}", *overrides]) as cfg:
        return ppo_models(cfg, policy, {"helpful": rm}), rm


def dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def test_model_dtype_reaches_every_ppo_model(tmp_path: Path) -> None:
    models, _ = _ppo_models(tmp_path, "model.dtype=bfloat16")
    for name in ("actor", "ref", "critic"):
        assert dtypes(models[name]) == {torch.bfloat16}, name
    assert dtypes(models["reward_models"]["helpful"]) == {torch.bfloat16}


def test_per_role_settings_and_critic_from_the_reward_model(tmp_path: Path) -> None:
    models, rm_path = _ppo_models(
        tmp_path, "model.dtype=bfloat16", "task.roles.reward.dtype=float32", "task.critic_init=reward_model"
    )
    assert dtypes(models["actor"]) == {torch.bfloat16}
    assert dtypes(models["reward_models"]["helpful"]) == {torch.float32}
    rm = AutoModelForSequenceClassification.from_pretrained(rm_path)
    critic = models["critic"]
    assert dtypes(critic) == {torch.bfloat16}  # the critic role keeps the model group's dtype
    torch.testing.assert_close(critic.head.weight, rm.score.weight.bfloat16())  # the RM's head, a copy
    assert critic.head.weight.data_ptr() != models["reward_models"]["helpful"].score.weight.data_ptr()


def test_unknown_role_setting_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"task\.roles\.critic\.lr"):
        _ppo_models(tmp_path, "+task.roles.critic.lr=1")


def test_gradient_checkpointing_reaches_the_trained_models_only(tmp_path: Path) -> None:
    models, _ = _ppo_models(tmp_path, "model.gradient_checkpointing=true")
    assert models["actor"].is_gradient_checkpointing
    assert models["critic"].backbone.is_gradient_checkpointing
    assert not models["ref"].is_gradient_checkpointing  # frozen: nothing to recompute
    assert not models["reward_models"]["helpful"].is_gradient_checkpointing
