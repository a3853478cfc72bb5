"""Bad user JSONL files and lines: each error names file:line:field (the files in ``tests/bad_inputs``,
non-UTF-8 bytes, a huge line, empty and missing files) and leaves the file unchanged;
``task.datamodule.on_error=skip`` skips, counts and logs bad lines once; and the hints in the messages name
config keys that exist and do what they say. Bad conversational records:
``test_data_formats_conversational.py``."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from jsonl_helpers import BAD_DIR, BLUE, GREEN, SYS, Q, assert_names_place, sha256, write_jsonl

from lit_rlhf.data.jsonl import DataFormatError, load_preferences, load_prompts, load_sft

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
    assert_names_place(info.value, path, line, field)
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
    assert_names_place(info.value, path, None, None)
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
    assert_names_place(info.value, path, 2, None)
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
    assert_names_place(info.value, path, 2, None)
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
