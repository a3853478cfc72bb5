"""Reading user JSONL files: the four formats, detection, and every bad input naming file/line/field."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from lit_rlhf.data.jsonl import (
    DataFormatError,
    PreferencePair,
    guess_kind,
    iter_jsonl,
    load_preferences,
    load_prompts,
    load_sft,
)

BAD_DIR = Path(__file__).parent / "bad_inputs"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ good files


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


# ------------------------------------------------------------------------------------------- bad files

# (file, loader, line, field, fragment of the problem)
BAD_CASES = [
    ("malformed_json.jsonl", load_preferences, 2, None, "malformed JSON"),
    ("missing_field.jsonl", load_preferences, 3, "rejected", "missing"),
    ("empty_field.jsonl", load_preferences, 2, "chosen", "expected a non-empty string, got an empty string"),
    ("wrong_type.jsonl", load_preferences, 2, "chosen", "expected a non-empty string, got int"),
    ("chosen_equals_rejected.jsonl", load_preferences, 2, "rejected", "identical to 'chosen'"),
    ("not_an_object.jsonl", load_preferences, 2, None, "expected a JSON object"),
    ("sft_empty_response.jsonl", load_sft, 2, "response", "non-empty string"),
    ("hh_no_assistant.jsonl", load_preferences, 2, "rejected", "no '\\n\\nAssistant:' turn"),
    ("hh_prompt_mismatch.jsonl", load_preferences, 3, "rejected", "differs"),
]


def _assert_names_place(err: DataFormatError, path: Path, line: int | None, field: str | None) -> None:
    msg = str(err)
    assert path.name in msg
    assert (err.path, err.line, err.field) == (path, line, field)
    if line is not None:
        assert f"{path.name}:{line}:" in msg
        assert "task.datamodule.on_error=skip" in msg
    if field is not None:
        assert f"field '{field}'" in msg


@pytest.mark.parametrize(
    ("name", "loader", "line", "field", "fragment"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_input_names_file_line_field_and_leaves_file_unchanged(
    name: str, loader, line: int, field: str | None, fragment: str
) -> None:
    path = BAD_DIR / name
    before = sha256(path)
    with pytest.raises(DataFormatError) as info:
        loader(path)
    _assert_names_place(info.value, path, line, field)
    assert fragment in str(info.value)
    assert sha256(path) == before


def test_malformed_json_reports_column() -> None:
    with pytest.raises(DataFormatError, match=r"column \d+"):
        load_preferences(BAD_DIR / "malformed_json.jsonl")


@pytest.mark.parametrize("name", ["empty.jsonl", "blank_lines_only.jsonl"])
def test_empty_file(name: str) -> None:
    path = BAD_DIR / name
    before = sha256(path)
    with pytest.raises(DataFormatError, match=r"empty \(no JSON records\)") as info:
        load_prompts(path)
    _assert_names_place(info.value, path, None, None)
    assert sha256(path) == before


def test_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9"}\n')
    assert [r.prompt for r in load_prompts(path)] == ["caf\u00e9"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"nope\.jsonl: file not found"):
        load_sft(tmp_path / "nope.jsonl")


def test_non_utf8_bytes_report_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    path.write_bytes(good + b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n')
    before = sha256(path)
    with pytest.raises(DataFormatError) as info:
        load_preferences(path)
    _assert_names_place(info.value, path, 2, None)
    msg = str(info.value)
    assert "UTF-8" in msg and "0xe9" in msg
    assert "byte offset 15 of the line" in msg and f"({len(good) + 15} in the file)" in msg
    assert sha256(path) == before


def test_huge_line_is_an_error_and_later_lines_still_count(tmp_path: Path, caplog) -> None:
    path = tmp_path / "huge.jsonl"
    huge = json.dumps({"prompt": "a", "chosen": "x" * 1_500_000, "rejected": "c"})
    path.write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
        + huge
        + '\n{"prompt": "d", "chosen": "e", "rejected": "f"}\n',
        encoding="utf-8",
    )
    before = sha256(path)
    with pytest.raises(DataFormatError, match="longer than 1000000 bytes") as info:
        load_preferences(path)  # default max_line_bytes = 1 MB
    _assert_names_place(info.value, path, 2, None)
    with caplog.at_level(logging.WARNING):
        pairs = load_preferences(path, on_error="skip", max_line_bytes=1000)
    assert [p.prompt for p in pairs] == ["a", "d"]
    assert "line 2 (" in caplog.text
    assert sha256(path) == before


# ---------------------------------------------------------------------------------------------- skipping


def test_skip_mode_counts_logs_once_and_keeps_good_lines(tmp_path: Path, caplog) -> None:
    path = tmp_path / "mixed.jsonl"
    lines = [
        '{"prompt": "p1", "chosen": "a", "rejected": "b"}',
        '{"prompt": "p2", "chosen": 3, "rejected": "b"}',
        '{"prompt": "p3", "chosen": "a", "rejected": "b"',
        "",
        '{"prompt": "p4", "chosen": "a", "rejected": "b"}',
        '{"prompt": "p5", "chosen": "a", "rejected": "a"}',
        '{"prompt": "p6", "chosen": "a", "rejected": "b"}',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="lit_rlhf.data.jsonl"):
        pairs = load_preferences(path, on_error="skip")
    assert [p.prompt for p in pairs] == ["p1", "p4", "p6"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert msg.startswith(f"skipped 3 of 6 lines in {path}: line 2 (chosen: expected a non-empty string")
    assert "line 3 (malformed JSON" in msg and "line 6 (rejected: identical" in msg


def test_skip_mode_with_only_bad_lines_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    shutil.copy(BAD_DIR / "wrong_type.jsonl", path)
    path.write_text(path.read_text().splitlines()[1] + "\n{not json}\n", encoding="utf-8")
    with pytest.raises(
        DataFormatError, match=r"bad\.jsonl: no valid records left .*first line 1 \(chosen: expected"
    ):
        load_preferences(path, on_error="skip")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:1: field 'chosen'"):
        load_preferences(path)


def test_invalid_on_error_value() -> None:
    with pytest.raises(ValueError, match="task.datamodule.on_error"):
        load_sft(BAD_DIR / "sft_empty_response.jsonl", on_error="ignore")  # type: ignore[arg-type]
