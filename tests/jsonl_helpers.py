"""Helpers shared by the ``tests/test_data_formats_*.py`` files: writing a JSONL file, hashing one (to
check a refused file is left unchanged), checking a :class:`DataFormatError` names its file/line/field, and
the chat messages the conversational records are built from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lit_rlhf.data.jsonl import DataFormatError

BAD_DIR = Path(__file__).parent / "bad_inputs"

SYS = {"role": "system", "content": "Be brief."}
Q = {"role": "user", "content": "What color is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_names_place(err: DataFormatError, path: Path, line: int | None, field: str | None) -> None:
    """``err`` and its message name ``path``, ``line`` and ``field``; a line's error names the skip option."""
    msg = str(err)
    assert path.name in msg
    assert (err.path, err.line, err.field) == (path, line, field)
    if line is not None:
        assert f"{path.name}:{line}:" in msg
        assert "task.datamodule.on_error=skip" in msg
    if field is not None:
        assert f"field '{field}'" in msg
