"""Prompt rendering (lit_rlhf.data.chat): chat template, start-of-sequence policy, truncation, and the
same prompt ids across the SFT, preference and prompt datamodules, on tokenizers of real families."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiny_hf import make_tokenizer
from tokenizers import processors

from lit_rlhf.data import PreferenceDataModule, PromptDataModule, SFTDataModule
from lit_rlhf.data.chat import (
    check_chat_template,
    prompt_key,
    prompt_text,
    render_prompts,
    start_tokens,
    truncate_left,
    uses_chat_template,
)
from lit_rlhf.data.tokenize import encode_example, encode_examples, encode_prompt, encode_prompts
from lit_rlhf.models.factory import load_tokenizer as load_hf_tokenizer
from lit_rlhf.world.tokenizer import load_tokenizer, save_tokenizer
from lit_rlhf.world.vocab import vocabulary

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # the tiny ChatML default
EGG = "How do I boil an egg?"


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tokenizers as lit_rlhf loads them from a user's folder (pad = eos when they have no pad)."""
    root = tmp_path_factory.mktemp("toks")
    out = {}
    for family in ("llama", "llama_bos", "qwen2", "gpt2"):
        make_tokenizer(family).save_pretrained(root / family)
        out[family] = load_hf_tokenizer(root / family)
    return out


def plain(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -------------------------------------------------------------------------------- the world, unchanged


def test_world_tokenizer_ids_are_what_they_were(tmp_path: Path) -> None:
    # The world's word-level tokenizer has no template and adds nothing: a prompt is its words' ids
    # (vocabulary lookup, by hand), truncated from the left; a sequence is prompt + response + <eos>=1.
    tok = load_tokenizer(save_tokenizer(tmp_path / "tok"))  # as the pipeline loads it
    vocab = {w: i for i, w in enumerate(vocabulary())}
    prompts = ["explain the caution please", "tell this briefly", "help you now kindly today"]
    responses = ["the caution is it", "thanks"]
    by_hand = [[vocab[w] for w in p.split()] for p in prompts]
    assert encode_prompts(tok, prompts, 3) == [ids[-3:] for ids in by_hand]
    assert encode_prompts(tok, prompts, 3, chat_template=False) == [ids[-3:] for ids in by_hand]
    rows = encode_examples(tok, prompts[:2], responses, max_prompt_tokens=3, max_length=9)
    resp = [[vocab[w] for w in r.split()] for r in responses]
    assert rows == [(by_hand[0][-3:] + resp[0] + [1], 3), (by_hand[1] + resp[1] + [1], 3)]
    with pytest.raises(ValueError, match=r"data\.chat_template=true but the tokenizer '.*tok' has no chat"):
        encode_prompts(tok, prompts, 3, chat_template=True)


# ---------------------------------------------------------------------------------- templated prompts


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_plain_prompt_under_auto_is_the_chatml_generation_prompt(toks, family: str) -> None:
    tok = toks[family]
    [ids] = encode_prompts(tok, [EGG], max_prompt_tokens=200)
    text = f"{SYSTEM}<|im_start|>user\n{EGG}<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert ids == plain(tok, text)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    # the conversation and its plain-string equivalent give the same ids
    assert encode_prompts(tok, [user(EGG)], 200) == [ids]
    # false: the raw text; a conversation still goes through the template
    assert encode_prompts(tok, [EGG], 200, chat_template=False) == [plain(tok, EGG)]
    assert encode_prompts(tok, [user(EGG)], 200, chat_template=False) == [ids]


def test_system_and_multi_turn_conversation(toks) -> None:
    tok = toks["qwen2"]
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": EGG},
    ]
    [ids] = encode_prompts(tok, [conv], 200)
    want = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        f"<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\n{EGG}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(ids, skip_special_tokens=False) == want
    assert prompt_text(conv) == EGG


def test_response_is_content_then_eos(toks) -> None:
    tok = toks["llama"]
    ids, n_prompt = encode_example(
        tok, EGG, "Put it in boiling water.", max_prompt_tokens=200, max_length=300
    )
    prompt_ids = encode_prompt(tok, EGG, 200)
    assert n_prompt == len(prompt_ids) and ids[:n_prompt] == prompt_ids
    assert ids[n_prompt:] == [
        *plain(tok, "Put it in boiling water."),
        tok.convert_tokens_to_ids("<|im_end|>"),
    ]
    assert tok.decode(ids[n_prompt:], skip_special_tokens=False) == "Put it in boiling water.<|im_end|>"


def test_truncated_template_keeps_its_bos_and_its_end(toks) -> None:
    tok = toks["llama"]
    full = encode_prompt(tok, EGG, 200)
    cut = encode_prompt(tok, EGG, 20)
    assert len(full) > 20 and cut == [full[0], *full[-19:]] and cut[0] == tok.bos_token_id
    qwen = toks["qwen2"]  # no bos token: a plain tail
    assert encode_prompt(qwen, EGG, 20) == encode_prompt(qwen, EGG, 200)[-20:]


# ------------------------------------------------------------------------------- plain, with a BOS


def test_llama_bos_plain_prompt_starts_with_bos_and_survives_truncation(toks) -> None:
    tok = toks["llama_bos"]
    bos = tok.convert_tokens_to_ids("<s>")
    body = plain(tok, EGG)
    assert start_tokens(tok) == [bos]
    assert encode_prompt(tok, EGG, 100) == [bos, *body]
    assert encode_prompt(tok, EGG, 4) == [bos, *body[-3:]]
    assert encode_prompt(tok, EGG, 1) == [bos]
    seq, n = encode_example(tok, EGG, "nine minutes", max_prompt_tokens=4, max_length=20)
    assert seq == [bos, *body[-3:], *plain(tok, "nine minutes"), tok.eos_token_id] and n == 4
    # score_texts-style calls with max_prompt_tokens=0 still drop the prompt entirely
    assert encode_example(tok, EGG, "yes", max_prompt_tokens=0, max_length=20)[0] == [*plain(tok, "yes"), 2]


def test_a_tokenizer_that_appends_eos_never_ends_a_prompt_with_it() -> None:
    tok = make_tokenizer("llama_bos")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    assert tok(EGG)["input_ids"][-1] == 2  # the tokenizer itself appends </s>
    assert encode_prompt(tok, EGG, 100) == [1, *plain(tok, EGG)]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_tokenizers_without_a_start_token(toks, family: str) -> None:
    assert start_tokens(toks[family]) == []


# --------------------------------------------------------------------------------------- settings


def test_conversation_without_a_template_names_the_tokenizer_folder(toks) -> None:
    tok = toks["gpt2"]  # loaded from its folder .../gpt2
    with pytest.raises(
        ValueError, match=r"conversations .* tokenizer '.*toks0/gpt2' has no chat template"
    ) as e:
        encode_prompts(tok, [user(EGG)], 10)
    assert "data.chat_template=auto" in str(e.value) and "model.tokenizer_path" in str(e.value)
    with pytest.raises(ValueError, match=r"data\.chat_template=true but the tokenizer '.*gpt2'"):
        encode_prompts(tok, [EGG], 10, chat_template=True)
    assert encode_prompts(tok, [EGG], 100) == [plain(tok, EGG)]  # auto without a template: plain


@pytest.mark.parametrize("bad", ["yes", "True", 1, None])
def test_chat_template_setting_is_validated(toks, bad) -> None:
    with pytest.raises(ValueError, match=r"data\.chat_template must be auto, true or false"):
        check_chat_template(bad)
    with pytest.raises(ValueError, match=r"data\.chat_template must be auto, true or false"):
        PromptDataModule(toks["qwen2"], "unused.jsonl", chat_template=bad)


def test_uses_chat_template_table(toks) -> None:
    table = {
        (fam, setting): uses_chat_template(toks[fam], EGG, setting)
        for fam in ("llama", "gpt2")
        for setting in ("auto", True, False)
        if not (fam == "gpt2" and setting is True)
    }
    assert table == {
        ("llama", "auto"): True,
        ("llama", True): True,
        ("llama", False): False,
        ("gpt2", "auto"): False,
        ("gpt2", False): False,
    }


def test_render_keeps_order_of_mixed_prompts(toks) -> None:
    tok = toks["llama_bos"]  # no template: only plain strings; with llama, mix both kinds
    chat = toks["llama"]
    mixed = [EGG, user("hi"), "hi", user(EGG)]
    rendered = render_prompts(chat, mixed, chat_template=False)
    assert [ids for ids, _ in rendered] == [
        plain(chat, EGG),
        encode_prompt(chat, "hi", 200),
        plain(chat, "hi"),
        encode_prompt(chat, EGG, 200),
    ]
    assert [n for _, n in rendered] == [0, 1, 0, 1]  # templated ones start with bos <|im_start|>
    assert [n for _, n in render_prompts(tok, [EGG, "hi"])] == [1, 1]


def test_prompt_text_and_key() -> None:
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}]
    assert prompt_text("plain") == "plain"
    assert (
        prompt_text([*conv, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]) == "q2"
    )
    assert prompt_text([{"role": "system", "content": "only"}]) == "only"
    swapped = [{"content": "s", "role": "system"}, {"content": "q1", "role": "user"}]
    assert prompt_key(conv) == prompt_key(swapped) != prompt_key("q1")
    assert prompt_key(user("q1")) != prompt_key("q1")


@given(
    ids=st.lists(st.integers(0, 50), max_size=30),
    max_tokens=st.integers(0, 40),
    n_keep=st.integers(0, 3),
)
def test_truncate_left_property(ids: list[int], max_tokens: int, n_keep: int) -> None:
    out = truncate_left(ids, max_tokens, n_keep)
    assert len(out) == min(len(ids), max_tokens)
    if len(ids) <= max_tokens:
        assert out == ids
    else:
        head = min(n_keep, max_tokens)
        assert out[:head] == ids[:head]
        assert out[head:] == (ids[len(ids) - (max_tokens - head) :] if max_tokens > head else [])


# ------------------------------------------------------------------- one rendering, three datamodules


def _write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


PROMPTS = [
    EGG,
    user("What is the capital of France?"),
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Tell me a joke about cats."},
    ],
    "Give me a recipe for soup, please, with onions, carrots, water, salt and patience.",
]


@pytest.mark.parametrize("family", ["llama", "llama_bos", "qwen2", "gpt2"])
@pytest.mark.parametrize("setting", ["auto", False])
def test_same_prompt_ids_in_sft_preference_and_prompt_datamodules(
    toks, tmp_path: Path, family: str, setting
) -> None:
    tok = toks[family]
    prompts = PROMPTS if family in ("llama", "qwen2") else [p for p in PROMPTS if isinstance(p, str)]
    reply = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    conv = lambda p: isinstance(p, list)  # noqa: E731
    sft = [
        {"prompt": p, "completion": reply("Paris.") if conv(p) else "Paris.", "id": i}
        for i, p in enumerate(prompts)
    ]
    pairs = [
        {
            "prompt": p,
            **(
                {"chosen": reply("yes"), "rejected": reply("no")}
                if conv(p)
                else {"chosen": "yes", "rejected": "no"}
            ),
        }
        for p in prompts
    ]
    max_prompt = 40 if family in ("llama", "qwen2") else 8  # ChatML's system turn alone is 28 tokens
    assert max(len(ids) for ids, _ in render_prompts(tok, prompts, setting)) > max_prompt  # some are cut
    kw = {"val_fraction": 0.0, "max_prompt_tokens": max_prompt, "chat_template": setting}
    sft_dm = SFTDataModule(tok, _write(tmp_path / "sft.jsonl", sft), max_length=80, **kw)
    pref_dm = PreferenceDataModule(tok, _write(tmp_path / "pairs.jsonl", pairs), max_length=80, **kw)
    prompt_dm = PromptDataModule(tok, _write(tmp_path / "prompts.jsonl", sft), batch_size=2, **kw)
    for dm in (sft_dm, pref_dm, prompt_dm):
        dm.setup("fit")

    by_key = {
        prompt_key(r.prompt): item["input_ids"] for r, item in zip(prompt_dm.all_records, prompt_dm.all_items)
    }
    assert len(by_key) == len(prompts)
    expected = encode_prompts(tok, prompts, max_prompt, chat_template=setting)
    assert [by_key[prompt_key(p)] for p in prompts] == expected
    for example, item in zip(sft_dm.train_examples, sft_dm._train):
        ids = by_key[prompt_key(example.prompt)]
        assert item["n_prompt"] == len(ids) and item["input_ids"][: len(ids)] == ids
        assert item["input_ids"][len(ids) :] == [*plain(tok, "Paris."), tok.eos_token_id]
    for pair, item in zip(pref_dm.train_pairs, pref_dm._train):
        ids = by_key[prompt_key(pair.prompt)]
        assert item["chosen_ids"] == [*ids, *plain(tok, "yes"), tok.eos_token_id]
        assert item["rejected_ids"] == [*ids, *plain(tok, "no"), tok.eos_token_id]
    templated = family in ("llama", "qwen2") and setting == "auto"
    if templated or family == "llama_bos":
        first = tok.convert_tokens_to_ids("<|im_start|>" if family == "llama" else "<s>")
        if family != "qwen2":  # qwen2 has no bos token
            assert all(ids[0] == first for ids in expected)
    if not templated and family == "llama_bos":
        assert expected[0] == [tok.bos_token_id, *plain(tok, EGG)[-7:]]  # bos survives the cut


def test_all_items_are_what_the_loaders_yield(toks, tmp_path: Path) -> None:
    tok = toks["qwen2"]
    records = [{"prompt": user(f"question {i} about cats")} for i in range(6)] + [{"prompt": "plain one"}]
    dm = PromptDataModule(tok, _write(tmp_path / "p.jsonl", records), val_fraction=0.3, batch_size=2)
    with pytest.raises(RuntimeError, match="setup"):
        _ = dm.all_items
    dm.setup("fit")
    items = dm.all_items
    assert [it["id"] for it in items] == [r.id for r in dm.all_records]
    assert [it["prompt"] for it in items] == [prompt_text(r.prompt) for r in dm.all_records]
    assert [it["input_ids"] for it in items] == encode_prompts(tok, [r.prompt for r in dm.all_records], 32)
    by_id = {it["id"]: it["input_ids"] for it in items}
    for batch in [*dm.train_dataloader(), *dm.val_dataloader()]:
        for row, mask, pid in zip(batch["input_ids"], batch["attention_mask"], batch["prompt_ids"].tolist()):
            assert row[mask.bool()].tolist() == by_id[pid]


def test_a_template_that_refuses_a_conversation_names_it(toks) -> None:
    tok = make_tokenizer("qwen2")
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system turns') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    assert encode_prompts(tok, ["fine"], 10) == [plain(tok, "fine")]
    bad = [{"role": "system", "content": "s"}, {"role": "user", "content": "the bad one"}]
    with pytest.raises(ValueError, match=r"refuses the prompt 'the bad one' \(roles \['system', 'user'\]\)"):
        encode_prompts(tok, [user("ok"), bad], 10)


def test_conversational_data_with_a_plain_tokenizer_fails_at_setup(toks, tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [{"prompt": user("hi")}, {"prompt": user("yo")}])
    dm = PromptDataModule(toks["gpt2"], path, val_fraction=0.0, batch_size=1)
    with pytest.raises(ValueError, match="has no chat template"):
        dm.setup("fit")


def test_datamodules_warn_when_the_template_outgrows_max_prompt_tokens(toks, tmp_path: Path, caplog) -> None:
    path = _write(tmp_path / "p.jsonl", [{"prompt": EGG}, {"prompt": "hi"}])
    full = [len(ids) for ids, _ in render_prompts(toks["llama"], [EGG, "hi"])]
    with caplog.at_level("WARNING", logger="lit_rlhf.data.common"):
        PromptDataModule(toks["llama"], path, val_fraction=0.0, batch_size=1, max_prompt_tokens=16).setup()
        PromptDataModule(
            toks["llama"], path, val_fraction=0.0, batch_size=1, max_prompt_tokens=max(full)
        ).setup()
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(
        f"2 of 2 prompts are longer than task.datamodule.max_prompt_tokens=16 tokens (longest {max(full)})"
    )
