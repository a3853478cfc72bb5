"""Reading user JSONL files: every TRL format (standard and conversational), detection, and every bad input
naming file/line/field; the hints name config keys that exist."""

from __future__ import annotations

import hashlib
import json
import logging
import re
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


# ------------------------------------------------------------------------- TRL's formats, both forms

SYS = {"role": "system", "content": "Be brief."}
Q = {"role": "user", "content": "What color is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


# (record, loader, expected normalised fields); meta is checked separately
GOOD_FORMATS = {
    "explicit_standard": (
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        load_preferences,
        ("The sky is", " blue.", " green."),
    ),
    "explicit_conversational": (
        {"prompt": [SYS, Q], "chosen": [BLUE], "rejected": [GREEN]},
        load_preferences,
        ([SYS, Q], "It is blue.", "It is green."),
    ),
    "implicit_standard_hh": (
        {"chosen": "\n\nHuman: sky?\n\nAssistant: blue", "rejected": "\n\nHuman: sky?\n\nAssistant: green"},
        load_preferences,
        ("\n\nHuman: sky?\n\nAssistant:", " blue", " green"),
    ),
    "implicit_conversational": (
        {"chosen": [Q, BLUE], "rejected": [Q, GREEN]},
        load_preferences,
        ([Q], "It is blue.", "It is green."),
    ),
    "implicit_conversational_multi_turn": (
        {
            "chosen": [SYS, msg("user", "hi"), msg("assistant", "hello"), Q, BLUE],
            "rejected": [SYS, msg("user", "hi"), msg("assistant", "hello"), Q, GREEN],
        },
        load_preferences,
        ([SYS, msg("user", "hi"), msg("assistant", "hello"), Q], "It is blue.", "It is green."),
    ),
    "explicit_string_prompt_beside_whole_conversations": (  # TRL's maybe_extract_prompt case
        {"prompt": "What color is the sky?", "chosen": [Q, BLUE], "rejected": [Q, GREEN]},
        load_preferences,
        ([Q], "It is blue.", "It is green."),
    ),
    "completion_standard": (
        {"prompt": "The sky is", "completion": " blue."},
        load_sft,
        ("The sky is", " blue."),
    ),
    "completion_conversational": (
        {"prompt": [Q], "completion": [BLUE]},
        load_sft,
        ([Q], "It is blue."),
    ),
    "response_standard": ({"prompt": "The sky is", "response": " blue."}, load_sft, ("The sky is", " blue.")),
    "response_conversational": (
        {"prompt": [SYS, Q], "response": [BLUE]},
        load_sft,
        ([SYS, Q], "It is blue."),
    ),
    "messages": ({"messages": [SYS, Q, BLUE]}, load_sft, ([SYS, Q], "It is blue.")),
    "messages_multi_turn": (
        {"messages": [Q, GREEN, msg("user", "Really?"), BLUE]},
        load_sft,
        ([Q, GREEN, msg("user", "Really?")], "It is blue."),
    ),
    "prompt_standard": ({"prompt": "The sky is"}, load_prompts, ("The sky is",)),
    "prompt_conversational": ({"prompt": [SYS, Q]}, load_prompts, ([SYS, Q],)),
    "prompt_ending_with_a_tool_result": (
        {"prompt": [Q, msg("assistant", "let me look"), msg("tool", "sky: blue")]},
        load_prompts,
        ([Q, msg("assistant", "let me look"), msg("tool", "sky: blue")],),
    ),
}


@pytest.mark.parametrize("name", list(GOOD_FORMATS))
def test_every_trl_format_normalises(tmp_path: Path, name: str) -> None:
    record, loader, want = GOOD_FORMATS[name]
    path = write_jsonl(tmp_path / f"{name}.jsonl", [{**record, "id": 7, "source": "trl"}])
    [got] = loader(path)
    fields = {
        load_preferences: ("prompt", "chosen", "rejected"),
        load_sft: ("prompt", "response"),
        load_prompts: ("prompt",),
    }[loader]
    assert tuple(getattr(got, f) for f in fields) == want
    assert got.meta == ({"source": "trl"} if loader is load_prompts else {"id": 7, "source": "trl"})
    # the normalised record holds the messages themselves, not the file's objects
    if isinstance(got.prompt, list):
        assert all(set(m) == {"role", "content"} for m in got.prompt)


def test_message_extra_keys_are_kept(tmp_path: Path) -> None:
    named = {"role": "user", "content": "hi", "name": "ann"}
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [named]}])
    assert load_prompts(path)[0].prompt == [named]


def test_load_prompts_dedups_on_canonical_json(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": [{"role": "user", "content": "hi"}]},
            {"prompt": [{"content": "hi", "role": "user"}]},  # same message, keys in another order
            {"prompt": "hi"},  # a plain string is another prompt
            {"prompt": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]},
        ],
    )
    records = load_prompts(path)
    assert [(r.id, r.prompt) for r in records] == [
        (0, [{"role": "user", "content": "hi"}]),
        (2, "hi"),
        (3, [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]),
    ]
    # prompts of preference and SFT conversations too
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"chosen": [Q, BLUE], "rejected": [Q, GREEN]}, {"chosen": [Q, GREEN], "rejected": [Q, BLUE]}],
    )
    assert [r.prompt for r in load_prompts(pairs)] == [[Q]]
    explicit = write_jsonl(
        tmp_path / "explicit.jsonl", [EXPLICIT, {**EXPLICIT, "prompt": [SYS, Q]}, EXPLICIT]
    )
    assert [r.prompt for r in load_prompts(explicit)] == [[Q], [SYS, Q]]
    demos = write_jsonl(tmp_path / "demos.jsonl", [{"messages": [Q, BLUE]}, {"messages": [SYS, Q, BLUE]}])
    assert [r.prompt for r in load_prompts(demos)] == [[Q], [SYS, Q]]


# (name, a valid first line of the file's kind, the bad second line, field, fragment of the problem)
EXPLICIT = {"prompt": [Q], "chosen": [BLUE], "rejected": [GREEN]}
BAD_CONVERSATIONS = [
    ("no_role", {"prompt": [Q]}, {"prompt": [{"content": "hi"}]}, "prompt[0].role", "missing"),
    ("no_content", {"prompt": [Q]}, {"prompt": [SYS, {"role": "user"}]}, "prompt[1].content", "missing"),
    ("unknown_role", {"prompt": [Q]}, {"prompt": [msg("bot", "hi")]}, "prompt[0].role", "unknown role 'bot'"),
    ("role_not_a_string", {"prompt": [Q]}, {"prompt": [{"role": 1, "content": "x"}]}, "prompt[0].role",
     "got int"),
    ("content_int", EXPLICIT, {**EXPLICIT, "chosen": [{"role": "assistant", "content": 3}]},
     "chosen[0].content", "expected a string, got int"),
    ("content_blocks", {"prompt": [Q]}, {"prompt": [{"role": "user", "content": [{"type": "text"}]}]},
     "prompt[0].content", "multimodal content blocks are not supported"),
    ("message_not_an_object", {"prompt": [Q]}, {"prompt": ["hi"]}, "prompt[0]", "expected a message"),
    ("empty_prompt_list", {"prompt": [Q]}, {"prompt": []}, "prompt", "got an empty list"),
    ("empty_messages", {"messages": [Q, BLUE]}, {"messages": []}, "messages", "got an empty list"),
    ("prompt_not_str_or_list", {"prompt": "a"}, {"prompt": 5}, "prompt",
     "expected a non-empty string or a list of messages, got int"),
    ("chosen_str_beside_messages", EXPLICIT, {**EXPLICIT, "chosen": "It is blue."}, "chosen",
     "expected a list of messages (the assistant's reply), as 'prompt' is one, got str"),
    ("rejected_object_beside_messages", EXPLICIT, {**EXPLICIT, "rejected": {"role": "assistant"}}, "rejected",
     "expected a list of messages, got object"),
    ("chosen_list_beside_string_prompt", {"prompt": "a", "chosen": "b", "rejected": "c"},
     {"prompt": "a", "chosen": [BLUE], "rejected": "c"}, "chosen",
     "expected a non-empty string (as 'prompt' is a string), got list"),
    ("completion_str_beside_messages", {"prompt": [Q], "completion": [BLUE]},
     {"prompt": [Q], "completion": "x"}, "completion", "as 'prompt' is one, got str"),
    ("messages_not_a_list", {"messages": [Q, BLUE]}, {"messages": "hi"}, "messages",
     "expected a list of messages, got str"),
    ("reply_from_the_user", EXPLICIT, {**EXPLICIT, "rejected": [Q, GREEN]}, "rejected[0].role",
     "expected 'assistant' (the reply), got 'user'"),
    ("two_replies", EXPLICIT, {**EXPLICIT, "chosen": [BLUE, BLUE]}, "chosen",
     "expected one assistant message (the reply), got 2 messages"),
    ("empty_reply", {"prompt": [Q], "completion": [BLUE]},
     {"prompt": [Q], "completion": [msg("assistant", " ")]}, "completion[0].content",
     "expected a non-empty reply"),
    ("prompt_ends_with_assistant", {"prompt": [Q]}, {"prompt": [Q, BLUE]}, "prompt[1].role",
     "must not end with an assistant message"),
    ("sft_last_not_assistant", {"messages": [Q, BLUE]}, {"messages": [Q, BLUE, msg("user", "and?")]},
     "messages[2].role", "the last message must be the assistant's reply"),
    ("sft_only_a_reply", {"messages": [Q, BLUE]}, {"messages": [BLUE]}, "messages", "has no prompt"),
    ("implicit_prompts_differ", {"chosen": [Q, BLUE], "rejected": [Q, GREEN]},
     {"chosen": [Q, BLUE], "rejected": [msg("user", "Is the sky green?"), GREEN]}, "rejected",
     "differs from the one in 'chosen'"),
    ("implicit_differ_earlier_turn", {"chosen": [Q, BLUE], "rejected": [Q, GREEN]},
     {"chosen": [SYS, Q, BLUE], "rejected": [Q, GREEN]}, "rejected", "differs from the one in 'chosen'"),
    ("implicit_last_not_assistant", {"chosen": [Q, BLUE], "rejected": [Q, GREEN]},
     {"chosen": [Q, BLUE, Q], "rejected": [Q, GREEN]}, "chosen[2].role", "must be the assistant's reply"),
    ("implicit_only_replies", {"chosen": [Q, BLUE], "rejected": [Q, GREEN]},
     {"chosen": [BLUE], "rejected": [GREEN]}, "chosen", "has no prompt"),
    ("implicit_mixed_list_and_str", {"chosen": [Q, BLUE], "rejected": [Q, GREEN]},
     {"chosen": [Q, BLUE], "rejected": "\n\nHuman: x\n\nAssistant: y"}, "rejected",
     "expected a list of messages like 'chosen', got str"),
    ("implicit_prompt_ends_with_assistant", {"chosen": [Q, BLUE], "rejected": [Q, GREEN]},
     {"chosen": [Q, BLUE, BLUE], "rejected": [Q, BLUE, GREEN]}, "chosen[1].role",
     "must not end with an assistant message"),
    ("conversational_identical_replies", EXPLICIT, {**EXPLICIT, "rejected": [BLUE]}, "rejected",
     "identical to 'chosen'"),
    ("unpaired_preference", {"prompt": "a", "completion": "b"},
     {"prompt": "a", "completion": "b", "label": False}, "label", "unpaired preference records"),
]  # fmt: skip
LOADER_OF = {"prompt": load_prompts, "messages": load_sft, "completion": load_sft, "chosen": load_preferences}


@pytest.mark.parametrize(
    ("name", "first", "bad", "field", "fragment"), BAD_CONVERSATIONS, ids=[c[0] for c in BAD_CONVERSATIONS]
)
def test_bad_conversation_names_file_line_field(
    tmp_path: Path, name: str, first: dict, bad: dict, field: str, fragment: str
) -> None:
    loader = next(fn for key, fn in LOADER_OF.items() if key in first)
    path = write_jsonl(tmp_path / f"{name}.jsonl", [first, bad])
    assert loader(write_jsonl(tmp_path / "first_only.jsonl", [first]))  # line 1 alone is valid
    with pytest.raises(DataFormatError) as info:
        loader(path)
    _assert_names_place(info.value, path, 2, field)
    assert fragment in info.value.problem


def test_text_only_language_modeling_records_are_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lm.jsonl", [{"text": "The sky is blue."}])
    with pytest.raises(DataFormatError, match=r"lm\.jsonl:1: cannot tell the format from keys \['text'\]"):
        load_sft(path)


# ------------------------------------------------------------------- hints name keys that exist


def test_line_hint_override_is_a_real_key_that_skips_bad_lines(tmp_path: Path) -> None:
    from hydra.utils import instantiate  # noqa: PLC0415
    from tiny_hf import make_tokenizer  # noqa: PLC0415

    from conftest import hydra_cfg  # noqa: PLC0415

    tok = make_tokenizer("qwen2")
    files = {
        "sft": ("train_path", [{"messages": [Q, BLUE]}, {"messages": [Q]}, {"messages": [SYS, Q, GREEN]}]),
        "reward_model": ("path", [{"chosen": [Q, BLUE], "rejected": [Q, GREEN]}, {"chosen": [Q, BLUE]}]),
        "ppo": ("train_path", [{"prompt": [Q]}, {"prompt": []}, {"prompt": "plain"}]),
    }
    for task, (key, records) in files.items():
        path = write_jsonl(tmp_path / f"{task}.jsonl", records)
        base = [f"task={task}", f"task.datamodule.{key}={path}", "task.datamodule.val_fraction=0"]
        if task != "reward_model":  # the world's held-out files otherwise
            base.append("task.datamodule.val_path=null")
        if task == "ppo":
            base.append("task.datamodule.batch_size=1")
        with hydra_cfg(tmp_path / task, base) as cfg, pytest.raises(DataFormatError) as info:
            instantiate(cfg.task.datamodule, tokenizer=tok).setup("fit")
        override = re.search(r"set (\S+=\S+) to skip", str(info.value)).group(1)
        assert override == "task.datamodule.on_error=skip"
        with hydra_cfg(tmp_path / f"{task}_skip", [*base, override]) as cfg:
            assert cfg.task.datamodule.on_error == "skip"
            dm = instantiate(cfg.task.datamodule, tokenizer=tok)
            dm.setup("fit")
        assert len(dm._train) == len(records) - 1  # the one bad line was skipped, the rest kept


def test_file_hint_names_the_data_keys_of_data_jsonl(tmp_path: Path) -> None:
    from conftest import hydra_cfg  # noqa: PLC0415

    with pytest.raises(DataFormatError) as info:
        load_prompts(tmp_path / "nope.jsonl")
    keys = re.findall(r"\bdata\.\w+", str(info.value))
    assert keys == ["data.path", "data.val_path"]
    over = ["data=jsonl", "data.path=/x/train.jsonl", "data.val_path=/x/val.jsonl"]
    with hydra_cfg(tmp_path, ["task=sft", *over]) as cfg:
        assert (cfg.data.path, cfg.data.val_path) == ("/x/train.jsonl", "/x/val.jsonl")
        assert (cfg.task.datamodule.train_path, cfg.task.datamodule.val_path) == (
            cfg.data.path,
            cfg.data.val_path,
        )
