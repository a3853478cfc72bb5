"""Tokenisation with truncation, the collators, the split and the three datamodules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from lit_rlhf.data import PreferenceDataModule, PromptDataModule, SFTDataModule
from lit_rlhf.data.datamodules import split_indices
from lit_rlhf.data.tokenize import (
    PreferenceCollator,
    PromptCollator,
    SFTCollator,
    encode_example,
    encode_examples,
    encode_prompt,
)

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "tell", "me", "about", "cats", "dogs", "purr"]
WORDS += ["bark", "no", "yes", "Human:", "Assistant:"]
PAD, EOS, UNK = 0, 1, 2


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK} | {w: i + 3 for i, w in enumerate(WORDS)}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def ids(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------ truncation


def test_encode_prompt_keeps_the_end(tok) -> None:
    assert encode_prompt(tok, "a b c d e", max_prompt_tokens=3) == ids(tok, "c d e")
    assert encode_prompt(tok, "a b", max_prompt_tokens=3) == ids(tok, "a b")


def test_encode_example_untruncated_ends_with_eos(tok) -> None:
    seq, n_prompt = encode_example(tok, "a b", "f g", max_prompt_tokens=3, max_length=8)
    assert seq == ids(tok, "a b f g") + [EOS]
    assert n_prompt == 2


def test_encode_example_truncation_keeps_prompt_end_and_response_start(tok) -> None:
    # prompt "a b c d e" -> "c d e" (3); 6 - 3 = 3 slots for "f g h i" + eos -> "f g h", eos dropped.
    seq, n_prompt = encode_example(tok, "a b c d e", "f g h i", max_prompt_tokens=3, max_length=6)
    assert seq == ids(tok, "c d e f g h")
    assert n_prompt == 3
    # Exactly filling max_length with the response leaves no room for eos: truncated too.
    seq, _ = encode_example(tok, "a", "f g", max_prompt_tokens=2, max_length=3)
    assert seq == ids(tok, "a f g")


def test_batch_encoding_matches_single(tok) -> None:
    prompts, responses = ["a b c d e", "tell me", "cats"], ["f g h i", "yes", "purr purr no"]
    batch = encode_examples(tok, prompts, responses, max_prompt_tokens=3, max_length=6)
    assert batch == [encode_example(tok, p, r, 3, 6) for p, r in zip(prompts, responses)]


def test_encode_example_rejects_max_length_not_above_prompt_budget(tok) -> None:
    with pytest.raises(ValueError, match="max_length"):
        encode_example(tok, "a", "b", max_prompt_tokens=4, max_length=4)


# ------------------------------------------------------------------------------------------- collators


def test_sft_collator_right_pads_and_masks_prompt_and_padding() -> None:
    batch = SFTCollator(pad_token_id=PAD)(
        [{"input_ids": [5, 6, 7, 1], "n_prompt": 2}, {"input_ids": [8, 9], "n_prompt": 1}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [8, 9, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 1], [-100, 9, -100, -100]]


def test_sft_collator_masks_padding_even_when_pad_equals_eos() -> None:
    batch = SFTCollator(pad_token_id=1)(
        [{"input_ids": [5, 6, 1], "n_prompt": 1}, {"input_ids": [8, 9], "n_prompt": 1}]
    )
    assert batch["labels"].tolist() == [[-100, 6, 1], [-100, 9, -100]]  # the real eos keeps its label


def test_preference_collator_stacks_chosen_then_rejected() -> None:
    items = [
        {"chosen_ids": [5, 6, 1], "rejected_ids": [5, 1]},
        {"chosen_ids": [7, 1], "rejected_ids": [7, 8, 9, 1]},
    ]
    batch = PreferenceCollator(pad_token_id=PAD)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 1, 0], [7, 1, 0, 0], [5, 1, 0, 0], [7, 8, 9, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_prompt_collator_left_pads_and_carries_ids() -> None:
    items = [{"id": 7, "prompt": "x y z", "input_ids": [4, 5, 6]}, {"id": 3, "prompt": "w", "input_ids": [9]}]
    batch = PromptCollator(pad_token_id=PAD)(items)
    assert batch["input_ids"].tolist() == [[4, 5, 6], [0, 0, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["prompt_ids"].dtype == torch.long and batch["prompt_ids"].tolist() == [7, 3]
    assert batch["prompts"] == ["x y z", "w"]


# ----------------------------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_complete() -> None:
    tr, va = split_indices(100, 0.1, seed=0)
    assert (tr, va) == split_indices(100, 0.1, seed=0)
    assert len(va) == 10 and not set(tr) & set(va) and sorted(tr + va) == list(range(100))
    assert split_indices(100, 0.1, seed=1)[1] != va
    assert split_indices(100, 0.0, seed=0) == (list(range(100)), [])
    assert len(split_indices(5, 0.01, seed=0)[1]) == 1  # a non-zero fraction holds out at least one


# ----------------------------------------------------------------------------------------- datamodules


@pytest.fixture
def pref_file(tmp_path: Path) -> str:
    words = WORDS[:10]
    records = [
        {
            "prompt": f"tell me {words[i % 10]} {words[(i // 10) % 10]}",
            "chosen": "cats purr",
            "rejected": "no",
            "id": i,
        }
        for i in range(40)
    ]
    return write_jsonl(tmp_path / "pairs.jsonl", records)


def test_preference_datamodule_split_and_batch_shapes(tok, pref_file: str) -> None:
    dm = PreferenceDataModule(
        tok, pref_file, val_fraction=0.25, seed=3, batch_size=8, max_prompt_tokens=3, max_length=6
    )
    dm.setup("fit")
    assert len(dm.train_pairs) == 30 and len(dm.val_pairs) == 10
    assert not {p.meta["id"] for p in dm.train_pairs} & {p.meta["id"] for p in dm.val_pairs}

    again = PreferenceDataModule(tok, pref_file, val_fraction=0.25, seed=3)
    again.setup("fit")
    assert again.val_pairs == dm.val_pairs
    other = PreferenceDataModule(tok, pref_file, val_fraction=0.25, seed=4)
    other.setup("fit")
    assert other.val_pairs != dm.val_pairs

    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (16, 6)  # 2B rows: 3 prompt + 2 response + eos
    assert batch["attention_mask"].shape == (16, 6)
    # Row i (chosen) and row B + i (rejected) share the prompt.
    assert torch.equal(batch["input_ids"][:8, :3], batch["input_ids"][8:, :3])
    assert (batch["input_ids"][:8, 3:5] == torch.tensor(ids(tok, "cats purr"))).all()
    assert len(list(dm.val_dataloader())) == 2


def test_sft_datamodule_batches(tok, tmp_path: Path) -> None:
    train = write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": "tell me a", "response": "b " * (i % 5 + 1)} for i in range(20)]
    )
    val = write_jsonl(tmp_path / "val.jsonl", [{"prompt": "c", "response": "d e"}])
    dm = SFTDataModule(tok, train, val_path=val, batch_size=4, max_prompt_tokens=3, max_length=6)
    dm.setup("fit")
    assert len(dm.train_examples) == 20 and len(dm.val_examples) == 1
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 6
    assert (batch["labels"][:, :3] == -100).all()  # the 3 prompt tokens never carry loss
    [vb] = list(dm.val_dataloader())
    assert vb["input_ids"].tolist() == [ids(tok, "c d e") + [EOS]]
    assert vb["labels"].tolist() == [[-100, *ids(tok, "d e"), EOS]]


def test_prompt_datamodule_shuffle_is_seeded_and_drops_last(tok, tmp_path: Path) -> None:
    records = [{"prompt": " ".join(["a"] * (i % 3) + [WORDS[i % 10], WORDS[i // 10]])} for i in range(40)]
    path = write_jsonl(tmp_path / "prompts.jsonl", records + [records[0]])  # duplicate is dropped
    dm = PromptDataModule(
        tok, path, val_fraction=0.1, seed=0, batch_size=8, val_batch_size=3, max_prompt_tokens=3
    )
    dm.setup("fit")
    dm.setup("fit")  # no reload
    assert len(dm.train_records) == 36 and len(dm.val_records) == 4
    assert sorted(r.id for r in dm.all_records) == list(range(40))

    batches = list(dm.train_dataloader())
    assert len(batches) == 4  # 36 // 8, last incomplete batch dropped
    b = batches[0]
    assert b["input_ids"].shape == (8, 3) and b["prompt_ids"].shape == (8,) and len(b["prompts"]) == 8
    assert (b["attention_mask"][:, -1] == 1).all()  # left padding: the last column is always real
    by_id = {r.id: r.prompt for r in dm.all_records}
    assert [by_id[i] for i in b["prompt_ids"].tolist()] == b["prompts"]

    same = PromptDataModule(tok, path, val_fraction=0.1, seed=0, batch_size=8)
    same.setup("fit")
    assert torch.equal(next(iter(same.train_dataloader()))["prompt_ids"], b["prompt_ids"])
    val = list(dm.val_dataloader())
    assert [len(v["prompts"]) for v in val] == [3, 1]
    assert [r.id for r in dm.val_records] == [
        i for v in val for i in v["prompt_ids"].tolist()
    ]  # not shuffled


def test_prompt_datamodule_num_batches_cycles_exactly(tok, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"{a} {b}"} for a in WORDS[:4] for b in WORDS[:5]]
    )
    dm = PromptDataModule(
        tok, path, val_fraction=0.0, seed=1, batch_size=6, num_batches=7
    )  # 20 // 6 = 3 per pass
    dm.setup("fit")
    batches = [b["prompt_ids"].tolist() for b in dm.train_dataloader()]
    assert len(batches) == len(dm.train_dataloader()) == 7
    assert all(len(b) == 6 and len(set(b)) == 6 for b in batches)  # full batches, no repeats within one
    first_pass = [i for b in batches[:3] for i in b]
    assert len(set(first_pass)) == 18  # a pass is a permutation
    again = PromptDataModule(tok, path, val_fraction=0.0, seed=1, batch_size=6, num_batches=7)
    again.setup("fit")
    assert [b["prompt_ids"].tolist() for b in again.train_dataloader()] == batches


def test_prompt_datamodule_val_file_ids_do_not_clash(tok, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": w} for w in WORDS[:4]])
    val = write_jsonl(tmp_path / "val.jsonl", [{"prompt": w} for w in WORDS[4:6]])
    dm = PromptDataModule(tok, train, val_path=val, batch_size=2)
    dm.setup("fit")
    assert [r.id for r in dm.all_records] == [0, 1, 2, 3, 4, 5]

    clash = write_jsonl(tmp_path / "clash.jsonl", [{"prompt": "x", "id": 2}])
    with pytest.raises(ValueError, match=r"prompt ids \[2\] appear in both task.datamodule.train_path"):
        PromptDataModule(tok, train, val_path=clash, batch_size=2).setup("fit")
    with pytest.raises(ValueError, match=r"task.datamodule.batch_size \(8\) exceeds the 4 training prompts"):
        PromptDataModule(tok, train, val_path=val, batch_size=8).setup("fit")


def test_datamodules_validate_arguments(tok, pref_file: str) -> None:
    no_pad = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<eos>")
    no_pad_msg = r"tokenizer \(built in memory\) has no pad_token.*model\.tokenizer_path"
    with pytest.raises(ValueError, match=no_pad_msg):
        PreferenceDataModule(no_pad, pref_file)
    too_short = r"task\.datamodule\.max_length \(8\) must exceed task\.datamodule\.max_prompt_tokens \(8\)"
    with pytest.raises(ValueError, match=too_short):
        SFTDataModule(tok, pref_file, max_prompt_tokens=8, max_length=8)
    with pytest.raises(ValueError, match="task.datamodule.val_fraction"):
        PromptDataModule(tok, pref_file, val_fraction=1.0)
    with pytest.raises(ValueError, match="task.datamodule.on_error"):
        PreferenceDataModule(tok, pref_file, on_error="ignore")  # type: ignore[arg-type]


# ------------------------------------------------------------- errors name keys that exist in the config

# (task, override that is wrong, key the error must name)
BAD_OVERRIDES = [
    ("sft", "task.datamodule.batch_size=0", "task.datamodule.batch_size"),
    ("sft", "task.datamodule.val_fraction=1.0", "task.datamodule.val_fraction"),
    ("sft", "task.datamodule.max_length=16", "task.datamodule.max_length"),
    ("sft", "data.chat_template=sometimes", "data.chat_template"),
    ("reward_model", "task.datamodule.max_prompt_tokens=0", "task.datamodule.max_prompt_tokens"),
    ("reward_model", "task.datamodule.num_workers=-1", "task.datamodule.num_workers"),
    ("reward_model", "task.datamodule.on_error=ignore", "task.datamodule.on_error"),
    ("ppo", "task.datamodule.val_batch_size=0", "task.datamodule.val_batch_size"),
    ("ppo", "task.iterations=0", "task.iterations"),
    ("ppo", "task.datamodule.on_error=warn", "task.datamodule.on_error"),
]


@pytest.mark.parametrize(("task", "override", "key"), BAD_OVERRIDES, ids=[o for _, o, _ in BAD_OVERRIDES])
def test_datamodule_errors_name_keys_that_exist(
    tok, tmp_path: Path, task: str, override: str, key: str
) -> None:
    from hydra.errors import InstantiationException  # noqa: PLC0415
    from hydra.utils import instantiate  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415

    from conftest import hydra_cfg  # noqa: PLC0415

    extra = ["task.datamodule.path=pairs.jsonl"] if task == "reward_model" else []
    with hydra_cfg(tmp_path, [f"task={task}", override, *extra]) as cfg:
        name, value = override.split("=")
        assert str(OmegaConf.select(cfg, name)) == value  # the override reaches the key
        with pytest.raises(InstantiationException) as info:
            instantiate(cfg.task.datamodule, tokenizer=tok)
        error = info.value.__cause__  # what the datamodule raised
        assert isinstance(error, ValueError)
        named = set(re.findall(r"\b(?:task|data|model)\.[a-z_]+(?:\.[a-z_]+)*", str(error)))
        assert key in named
        missing = object()
        assert all(OmegaConf.select(cfg, k, default=missing) is not missing for k in named), named


def test_datamodule_config_passes_chat_template_through(tok, tmp_path: Path) -> None:
    from hydra.utils import instantiate  # noqa: PLC0415

    from conftest import hydra_cfg  # noqa: PLC0415

    for task, setting, want in [
        ("sft", "false", False),
        ("reward_model", "true", True),
        ("ppo", "auto", "auto"),
    ]:
        extra = ["task.datamodule.path=pairs.jsonl"] if task == "reward_model" else []
        with hydra_cfg(tmp_path / task, [f"task={task}", f"data.chat_template={setting}", *extra]) as cfg:
            got = instantiate(cfg.task.datamodule, tokenizer=tok).chat_template
            assert got == want and type(got) is type(want)
