"""Reading user JSONL files in TRL's formats, standard and conversational (lists of ``{"role", "content"}``
messages): every format normalises to the same records, message keys are kept, prompts de-duplicate on
canonical JSON, and every bad conversational record names file:line:field (``prompt[1].role``, …)."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonl_helpers import BLUE, GREEN, SYS, Q, assert_names_place, msg, write_jsonl

from lit_rlhf.data.jsonl import DataFormatError, load_preferences, load_prompts, load_sft

# ------------------------------------------------------------------------- TRL's formats, both forms

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
    assert_names_place(info.value, path, 2, field)
    assert fragment in info.value.problem


def test_text_only_language_modeling_records_are_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lm.jsonl", [{"text": "The sky is blue."}])
    with pytest.raises(DataFormatError, match=r"lm\.jsonl:1: cannot tell the format from keys \['text'\]"):
        load_sft(path)
