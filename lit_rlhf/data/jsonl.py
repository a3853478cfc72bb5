"""Reading user JSONL files: bounded line reading, format detection per file, and loading.

The record formats — TRL's standard (strings) and conversational (``{"role", "content"}`` messages)
preference, prompt-completion, messages and prompt-only records, and Anthropic-HH dialogues — and their
validation live in :mod:`lit_rlhf.data.formats`; a file's kind is that of its first valid record.

Extra keys are allowed and kept in each record's ``meta``. Every problem with a file raises a
:class:`DataFormatError` naming the file, the line and the field; with ``on_error="skip"`` bad lines are
skipped, counted and summarised in one warning instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lit_rlhf.data.chat import Prompt, prompt_key
from lit_rlhf.data.formats import (
    FIELDS,
    HH_ASSISTANT,
    DataFormatError,
    RecordKind,
    guess_kind,
    parse_record,
    split_hh,
)
from lit_rlhf.data.formats import json_type as _json_type
from lit_rlhf.data.sources import DatasetOptions, Source

__all__ = [
    "HH_ASSISTANT",
    "DataFormatError",
    "PreferencePair",
    "PromptRecord",
    "RecordKind",
    "SFTExample",
    "guess_kind",
    "iter_jsonl",
    "load_preferences",
    "load_prompts",
    "load_sft",
    "parse_record",
    "split_hh",
]

OnError = Literal["raise", "skip"]
MAX_LINE_BYTES = 1_000_000
PREFERENCE_KINDS: tuple[RecordKind, ...] = ("explicit", "implicit")
SFT_KINDS: tuple[RecordKind, ...] = ("completion", "sft", "messages")
PROMPT_KINDS: tuple[RecordKind, ...] = ("prompt", *SFT_KINDS, *PREFERENCE_KINDS)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePair:
    """One preference comparison: ``chosen`` was preferred to ``rejected`` as a reply to ``prompt``.

    Attributes:
        prompt: The prompt: a string (for HH files, the dialogue up to and including the last Assistant
            tag) or the conversation's messages before the reply.
        chosen: The preferred response (the assistant's content).
        rejected: The dispreferred response.
        meta: The record's other keys (e.g. "id", "difficulty", "risky"), unchanged.
    """

    prompt: Prompt
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SFTExample:
    """One demonstration: a prompt and the response to imitate.

    Attributes:
        prompt: The prompt: a string or the conversation's messages before the reply.
        response: The demonstrated response (the assistant's content).
        meta: The record's other keys, unchanged.
    """

    prompt: Prompt
    response: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptRecord:
    """One prompt for generation (PPO rollouts, evaluation).

    Attributes:
        id: The record's integer "id" if it has one, else its 0-based record index in the file
            (plus the loader's ``id_offset``). Unique within a file; r_ref is stored per id.
        prompt: The prompt: a string or messages (render it with :mod:`lit_rlhf.data.chat`).
        meta: The record's other keys (excluding "id"), unchanged.
    """

    id: int
    prompt: Prompt
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- reading


def _read_records(path: str | Path, max_line_bytes: int) -> Iterator[tuple[int, dict | DataFormatError]]:
    """Yield ``(line_no, record)`` or ``(line_no, error)`` per non-blank line; raise for file-level errors.

    Lines are read in binary with a bounded ``readline`` so a single huge line cannot exhaust memory,
    and decoded one at a time so a bad byte is reported with its line and offset.
    """
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "file not found"
        raise DataFormatError(path, what)
    n_records = 0
    with p.open("rb") as f:
        line_no, offset = 0, 0
        while True:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                break
            line_no += 1
            line_start = offset
            offset += len(raw)
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # drain the rest of the line in bounded chunks
                    raw = f.readline(max_line_bytes + 1)
                    offset += len(raw)
                n_records += 1
                yield (
                    line_no,
                    DataFormatError(
                        path, f"line is longer than {max_line_bytes} bytes (max_line_bytes)", line=line_no
                    ),
                )
                continue
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # tolerate a BOM
            except UnicodeDecodeError as e:
                n_records += 1
                yield (
                    line_no,
                    DataFormatError(
                        path,
                        f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte offset {e.start} of the line "
                        f"({line_start + e.start} in the file); save the file as UTF-8",
                        line=line_no,
                    ),
                )
                continue
            if not text.strip():
                continue
            n_records += 1
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield (
                    line_no,
                    DataFormatError(path, f"malformed JSON: {e.msg} (column {e.colno})", line=line_no),
                )
                continue
            if not isinstance(obj, dict):
                yield (
                    line_no,
                    DataFormatError(
                        path, f"expected a JSON object {{...}}, got {_json_type(obj)}", line=line_no
                    ),
                )
                continue
            yield line_no, obj
    if n_records == 0:
        raise DataFormatError(path, "file is empty (no JSON records)")


def iter_jsonl(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, dict]]:
    """Iterate over the JSON objects of a JSONL file, skipping blank lines.

    Args:
        path: The file.
        max_line_bytes: Longest accepted line; longer lines are an error (never read whole).

    Yields:
        ``(line_no, record)`` with 1-based line numbers.

    Raises:
        DataFormatError: Missing or empty file, non-UTF-8 bytes, malformed JSON, a line that is not an
            object, or a line longer than ``max_line_bytes``.
    """
    for line_no, rec in _read_records(path, max_line_bytes):
        if isinstance(rec, DataFormatError):
            raise rec
        yield line_no, rec


# --------------------------------------------------------------------------------------------- loading


def _short(err: DataFormatError) -> str:
    """``line 4 (chosen: expected a non-empty string, got int)`` (``row 4`` in a dataset) for summaries."""
    where = f"{'row' if err.split else 'line'} {err.line}"
    return f"{where} ({err.field + ': ' if err.field else ''}{err.problem})"


def _load(
    path: str | Path,
    accept: tuple[RecordKind, ...],
    on_error: OnError,
    max_line_bytes: int,
    what: str,
    dataset: DatasetOptions | dict | None = None,
) -> tuple[RecordKind, list[tuple[int, dict[str, Any]]], str | None]:
    """Read, detect and validate a file or dataset; returns its kind, the ``(line_no, parsed)`` of good
    records (row indices for a dataset) and the dataset split (None for JSONL)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"task.datamodule.on_error must be 'raise' or 'skip', got {on_error!r}")
    src = Source(path, DatasetOptions.of(dataset), lambda: _read_records(path, max_line_bytes))
    records, unit = src.records, "rows" if src.split else "lines"

    # 1. Detect the kind from the first record that is valid for the kind its keys suggest.
    kind: RecordKind | None = None
    for line_no, rec in records:
        if isinstance(rec, dict) and (guess := guess_kind(rec)) is not None:
            try:
                src.parse(line_no, rec, guess)
            except DataFormatError:
                continue
            kind = guess
            break
    if kind is None:  # nothing valid: the first problem is the most useful one to report
        errors = [src.first_problem(line_no, rec) for line_no, rec in records]
        if on_error == "raise":
            raise errors[0]
        raise DataFormatError(
            path,
            f"no valid records left after skipping all {len(errors)} {unit}; first {_short(errors[0])}",
            hint="Fix the file.",
        )
    if kind not in accept:
        raise DataFormatError(
            path,
            f"{what} need a {' or '.join(repr(k) for k in accept)} file, but this one is {kind!r} "
            f"(keys {sorted(FIELDS[kind])})",
            hint="Point this data key at a file of the right kind.",
        )

    # 2. Validate every record against the detected kind.
    good: list[tuple[int, dict[str, Any]]] = []
    bad: list[DataFormatError] = []
    for line_no, rec in records:
        try:
            if isinstance(rec, DataFormatError):
                raise rec
            good.append((line_no, src.parse(line_no, rec, kind)))
        except DataFormatError as e:
            if on_error == "raise":
                raise
            bad.append(e)
    if bad:
        shown = ", ".join(_short(e) for e in bad[:5])
        more = f", and {len(bad) - 5} more" if len(bad) > 5 else ""
        log.warning("skipped %d of %d %s in %s: %s%s", len(bad), len(records), unit, path, shown, more)
    return kind, good, src.split


def load_preferences(
    path: str | Path,
    on_error: OnError = "raise",
    max_line_bytes: int = MAX_LINE_BYTES,
    dataset: DatasetOptions | dict | None = None,
) -> list[PreferencePair]:
    """Load preference pairs: explicit ``{prompt, chosen, rejected}`` or implicit ``{chosen, rejected}``.

    Standard (strings; implicit ones are Anthropic-HH dialogues) and conversational (messages) records
    are both read; see :mod:`lit_rlhf.data.formats`.

    Args:
        path: A JSONL file, or a ``datasets`` source (:mod:`lit_rlhf.data.sources`).
        on_error: "raise" on the first bad line, or "skip" bad lines (one summary warning).
        max_line_bytes: Longest accepted line.
        dataset: Split, subset, revision and column mapping (:class:`~lit_rlhf.data.sources.DatasetOptions`)
            when ``path`` is a ``datasets`` source (a saved folder, a parquet/arrow/JSON file, a Hub id);
            the column mapping applies to JSONL files too.

    Returns:
        The pairs in file order.

    Raises:
        DataFormatError: For any bad line (with "raise"), or when no valid pair is left.
    """
    _, good, _ = _load(path, PREFERENCE_KINDS, on_error, max_line_bytes, "preference pairs", dataset)
    return [PreferencePair(r["prompt"], r["chosen"], r["rejected"], r["meta"]) for _, r in good]


def load_sft(
    path: str | Path,
    on_error: OnError = "raise",
    max_line_bytes: int = MAX_LINE_BYTES,
    dataset: DatasetOptions | dict | None = None,
) -> list[SFTExample]:
    """Load demonstrations: ``{prompt, completion}``, ``{prompt, response}`` or ``{messages}`` records.

    Prompts and replies are strings or messages (see :mod:`lit_rlhf.data.formats`); a ``messages``
    conversation's prompt is all but its last message, which must be the assistant's.

    Args:
        path: A JSONL file, or a ``datasets`` source (:mod:`lit_rlhf.data.sources`).
        on_error: "raise" on the first bad line, or "skip" bad lines (one summary warning).
        max_line_bytes: Longest accepted line.
        dataset: Split, subset, revision and column mapping (:class:`~lit_rlhf.data.sources.DatasetOptions`)
            when ``path`` is a ``datasets`` source (a saved folder, a parquet/arrow/JSON file, a Hub id);
            the column mapping applies to JSONL files too.

    Returns:
        The examples in file order.

    Raises:
        DataFormatError: For any bad line (with "raise"), or when no valid example is left.
    """
    _, good, _ = _load(path, SFT_KINDS, on_error, max_line_bytes, "SFT examples", dataset)
    return [SFTExample(r["prompt"], r["response"], r["meta"]) for _, r in good]


def load_prompts(
    path: str | Path,
    on_error: OnError = "raise",
    max_line_bytes: int = MAX_LINE_BYTES,
    id_offset: int = 0,
    dataset: DatasetOptions | dict | None = None,
) -> list[PromptRecord]:
    """Load the distinct prompts of a prompt-only, SFT or preference file (any format it can have).

    Prompts are deduplicated by their canonical JSON (a string, or the messages), keeping the first
    occurrence (its id and meta) and file order.

    Args:
        path: A JSONL file, or a ``datasets`` source (:mod:`lit_rlhf.data.sources`).
        on_error: "raise" on the first bad line, or "skip" bad lines (one summary warning).
        max_line_bytes: Longest accepted line.
        dataset: Split, subset, revision and column mapping (:class:`~lit_rlhf.data.sources.DatasetOptions`)
            when ``path`` is a ``datasets`` source (a saved folder, a parquet/arrow/JSON file, a Hub id);
            the column mapping applies to JSONL files too.
        id_offset: Added to index-derived ids (records without an "id"), so that two files can be
            combined without clashes.

    Returns:
        The prompt records in file order.

    Raises:
        DataFormatError: For any bad line (with "raise"), a non-integer or clashing "id", or when no
            valid prompt is left.
    """
    _, good, split = _load(path, PROMPT_KINDS, on_error, max_line_bytes, "prompts", dataset)
    out: list[PromptRecord] = []
    seen_prompts: set[str] = set()
    id_lines: dict[int, int] = {}
    for index, (line_no, r) in enumerate(good):
        meta = dict(r["meta"])
        rid = meta.pop("id", None)
        if rid is None:
            rid = id_offset + index
        elif isinstance(rid, bool) or not isinstance(rid, int):
            raise DataFormatError(
                path, f"expected an integer, got {_json_type(rid)}", line=line_no, field="id", split=split
            )
        key = prompt_key(r["prompt"])
        if key in seen_prompts:
            continue
        if rid in id_lines:
            raise DataFormatError(
                path,
                f"id {rid} is already used by {'row' if split else 'line'} {id_lines[rid]} for another "
                "prompt (ids must be unique)",
                line=line_no,
                field="id",
                split=split,
            )
        seen_prompts.add(key)
        id_lines[rid] = line_no
        out.append(PromptRecord(rid, r["prompt"], meta))
    return out
