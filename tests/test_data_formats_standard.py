"""Reading user JSONL files in the standard (plain-string) TRL formats: explicit and HH-style implicit
preference pairs, SFT and prompt-only files, format detection from the keys, prompt ids and
de-duplication, a file of the wrong kind, blank lines. Conversational records:
``test_data_formats_conversational.py``; bad files and lines: ``test_data_formats_errors.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonl_helpers import write_jsonl

from lit_rlhf.data.jsonl import (
    DataFormatError,
    PreferencePair,
    guess_kind,
    iter_jsonl,
    load_preferences,
    load_prompts,
    load_sft,
)


def test_explicit_format_keeps_extra_keys(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {
                "prompt": "tell me about cats",
                "chosen": "cats purr",
                "rejected": "no",
                "id": 3,
                "risky": False,
            },
            {
                "prompt": "tell me about dogs",
                "chosen": "dogs bark",
                "rejected": "go away",
                "difficulty": "hard",
            },
        ],
    )
    pairs = load_preferences(path)
    assert pairs == [
        PreferencePair("tell me about cats", "cats purr", "no", {"id": 3, "risky": False}),
        PreferencePair("tell me about dogs", "dogs bark", "go away", {"difficulty": "hard"}),
    ]
    with pytest.raises(AttributeError):  # frozen
        pairs[0].prompt = "x"  # type: ignore[misc]


def test_hh_multi_turn_split_at_last_assistant(tmp_path: Path) -> None:
    dialogue = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me about cats\n\nAssistant:"
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [{"chosen": dialogue + " cats purr", "rejected": dialogue + " no", "id": "a1"}],
    )
    [pair] = load_preferences(path)
    assert pair.prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me about cats\n\nAssistant:"
    assert pair.chosen == " cats purr"
    assert pair.rejected == " no"
    assert pair.meta == {"id": "a1"}


def test_sft_and_prompt_only_files(tmp_path: Path) -> None:
    sft = write_jsonl(
        tmp_path / "sft.jsonl",
        [{"prompt": "tell me about cats", "response": "cats purr"}, {"prompt": "hi", "response": "hello"}],
    )
    examples = load_sft(sft)
    assert [(e.prompt, e.response) for e in examples] == [
        ("tell me about cats", "cats purr"),
        ("hi", "hello"),
    ]

    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": "hi", "difficulty": "easy"}, {"prompt": "yo"}]
    )
    records = load_prompts(prompts)
    assert [(r.id, r.prompt, r.meta) for r in records] == [(0, "hi", {"difficulty": "easy"}), (1, "yo", {})]


@pytest.mark.parametrize(
    ("keys", "kind"),
    [
        ({"prompt", "chosen", "rejected", "id"}, "explicit"),
        ({"chosen", "rejected"}, "implicit"),
        ({"prompt", "response", "risky"}, "sft"),
        ({"prompt", "completion"}, "completion"),
        ({"messages", "id"}, "messages"),
        ({"prompt"}, "prompt"),
        ({"prompt", "chosen"}, "explicit"),  # incomplete, but clearly a preference record
        ({"text"}, None),
    ],
)
def test_guess_kind(keys: set[str], kind: str | None) -> None:
    assert guess_kind(dict.fromkeys(keys, "x")) == kind


def test_detection_uses_first_valid_record(tmp_path: Path) -> None:
    # Line 1 is incomplete; the file is still detected as explicit from line 2 and line 1 is reported.
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": "a", "chosen": "b"}, {"prompt": "a", "chosen": "b", "rejected": "c"}],
    )
    with pytest.raises(DataFormatError) as info:
        load_preferences(path)
    assert (info.value.line, info.value.field) == (1, "rejected")


def test_load_prompts_accepts_every_kind_and_deduplicates(tmp_path: Path) -> None:
    hh = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
            {"chosen": "\n\nHuman: yo\n\nAssistant: hey", "rejected": "\n\nHuman: yo\n\nAssistant: no"},
            {"chosen": "\n\nHuman: hi\n\nAssistant: hey", "rejected": "\n\nHuman: hi\n\nAssistant: bye"},
        ],
    )
    records = load_prompts(hh)
    assert [(r.id, r.prompt) for r in records] == [
        (0, "\n\nHuman: hi\n\nAssistant:"),
        (1, "\n\nHuman: yo\n\nAssistant:"),
    ]

    explicit = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "b", "chosen": "x", "rejected": "y", "id": 10},
            {"prompt": "a", "chosen": "x", "rejected": "y", "id": 11},
            {"prompt": "b", "chosen": "z", "rejected": "y", "id": 12},
        ],
    )
    assert [(r.id, r.prompt) for r in load_prompts(explicit)] == [(10, "b"), (11, "a")]
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "q", "response": "r"}])
    assert [r.prompt for r in load_prompts(sft, id_offset=5)] == ["q"]
    assert load_prompts(sft, id_offset=5)[0].id == 5


def test_prompt_ids_must_be_unique_integers(tmp_path: Path) -> None:
    clash = write_jsonl(tmp_path / "clash.jsonl", [{"prompt": "a", "id": 1}, {"prompt": "b", "id": 1}])
    with pytest.raises(DataFormatError, match=r"clash\.jsonl:2: field 'id'"):
        load_prompts(clash)
    text_id = write_jsonl(tmp_path / "text_id.jsonl", [{"prompt": "a", "id": "x7"}])
    with pytest.raises(DataFormatError, match=r"text_id\.jsonl:1: field 'id': expected an integer, got str"):
        load_prompts(text_id)


def test_loader_rejects_file_of_the_wrong_kind(tmp_path: Path) -> None:
    sft = write_jsonl(tmp_path / "demos.jsonl", [{"prompt": "q", "response": "r"}])
    with pytest.raises(DataFormatError, match=r"demos\.jsonl.*'sft'"):
        load_preferences(sft)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataFormatError, match=r"pairs\.jsonl.*'explicit'"):
        load_sft(pairs)


def test_iter_jsonl_skips_blank_lines_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a"}\n\n   \n{"prompt": "b"}', encoding="utf-8")  # no final newline
    assert list(iter_jsonl(path)) == [(1, {"prompt": "a"}), (4, {"prompt": "b"})]
