"""Reading user JSONL files: format detection, validation and errors that say what to fix.

Four record kinds are recognised per file, from the keys of its first valid record:

* ``"explicit"`` — ``{"prompt", "chosen", "rejected"}`` (TRL's explicit-prompt preference format);
* ``"hh"`` — ``{"chosen", "rejected"}`` full Anthropic-HH dialogues (``"\\n\\nHuman: … \\n\\nAssistant: …"``);
  the prompt is everything up to and including the last ``"\\n\\nAssistant:"``, the response what follows;
* ``"sft"`` — ``{"prompt", "response"}``;
* ``"prompt"`` — ``{"prompt"}`` only (prompts for PPO).

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

log = logging.getLogger(__name__)

RecordKind = Literal["explicit", "hh", "sft", "prompt"]
OnError = Literal["raise", "skip"]

HH_ASSISTANT = "\n\nAssistant:"
MAX_LINE_BYTES = 1_000_000
_LINE_HINT = "Fix or remove this line (or set data.on_error=skip to skip bad lines)."
_FIELDS: dict[str, tuple[str, ...]] = {
    "explicit": ("prompt", "chosen", "rejected"),
    "hh": ("chosen", "rejected"),
    "sft": ("prompt", "response"),
    "prompt": ("prompt",),
}


class DataFormatError(ValueError):
    """A user data file that cannot be read, with the place and the fix in its message.

    Attributes:
        path: The file.
        line: 1-based line number, or None for problems with the whole file.
        field: The offending JSON field, or None.
        problem: What is wrong, without the location (e.g. "expected a non-empty string, got int").
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{path}:{line}" if line is not None else f"{path}"
        what = f"field '{field}': {problem}" if field is not None else problem
        if hint is None:
            hint = _LINE_HINT if line is not None else "Check data.path (or data.train_path/data.val_path)."
        super().__init__(f"{where}: {what}. {hint}".rstrip())


@dataclass(frozen=True)
class PreferencePair:
    """One preference comparison: ``chosen`` was preferred to ``rejected`` as a reply to ``prompt``.

    Attributes:
        prompt: The prompt text (for HH files, the dialogue up to and including the last Assistant tag).
        chosen: The preferred response.
        rejected: The dispreferred response.
        meta: The record's other keys (e.g. "id", "difficulty", "risky"), unchanged.
    """

    prompt: str
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SFTExample:
    """One demonstration: a prompt and the response to imitate.

    Attributes:
        prompt: The prompt text.
        response: The demonstrated response.
        meta: The record's other keys, unchanged.
    """

    prompt: str
    response: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptRecord:
    """One prompt for generation (PPO rollouts, evaluation).

    Attributes:
        id: The record's integer "id" if it has one, else its 0-based record index in the file
            (plus the loader's ``id_offset``). Unique within a file; r_ref is stored per id.
        prompt: The prompt text.
        meta: The record's other keys (excluding "id"), unchanged.
    """

    id: int
    prompt: str
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


# ------------------------------------------------------------------------------------------- detection


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "bool", int: "int", float: "float", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def guess_kind(record: dict) -> RecordKind | None:
    """The record kind its keys suggest (extra keys ignored), or None.

    Any of "chosen"/"rejected" makes a preference record (explicit if "prompt" is there, else HH);
    otherwise "response" makes an SFT record and a lone "prompt" a prompt-only record.
    """
    if "chosen" in record or "rejected" in record:
        return "explicit" if "prompt" in record else "hh"
    if "response" in record:
        return "sft"
    if "prompt" in record:
        return "prompt"
    return None


def split_hh(dialogue: str) -> tuple[str, str] | None:
    """Split an HH dialogue at its last ``"\\n\\nAssistant:"`` into (prompt incl. the tag, response)."""
    i = dialogue.rfind(HH_ASSISTANT)
    if i < 0:
        return None
    cut = i + len(HH_ASSISTANT)
    return dialogue[:cut], dialogue[cut:]


def _check_str(path: Path, line: int, record: dict, key: str) -> str:
    if key not in record:
        raise DataFormatError(path, "missing", line=line, field=key)
    value = record[key]
    if not isinstance(value, str):
        raise DataFormatError(
            path, f"expected a non-empty string, got {_json_type(value)}", line=line, field=key
        )
    if not value.strip():
        raise DataFormatError(path, "expected a non-empty string, got an empty string", line=line, field=key)
    return value


def parse_record(path: str | Path, line: int, record: dict, kind: RecordKind) -> dict[str, Any]:
    """Validate one record as ``kind`` and return its normalised fields plus ``meta``.

    Returns:
        A dict with "prompt" and, per kind, "chosen"/"rejected" or "response", and "meta" (other keys).

    Raises:
        DataFormatError: Missing field, wrong type, empty string, chosen == rejected, an HH dialogue
            without an Assistant turn, or HH chosen/rejected whose dialogues before it differ.
    """
    path = Path(path)
    values = {k: _check_str(path, line, record, k) for k in _FIELDS[kind]}
    meta = {k: v for k, v in record.items() if k not in _FIELDS[kind]}
    if kind in ("explicit", "hh") and values["chosen"] == values["rejected"]:
        raise DataFormatError(
            path, "identical to 'chosen' (no preference to learn)", line=line, field="rejected"
        )
    if kind == "hh":
        parts = {}
        for k in ("chosen", "rejected"):
            split = split_hh(values[k])
            if split is None:
                raise DataFormatError(
                    path,
                    "HH dialogue has no '\\n\\nAssistant:' turn to split the response at",
                    line=line,
                    field=k,
                )
            if not split[1].strip():
                raise DataFormatError(
                    path, "HH dialogue has an empty last Assistant turn", line=line, field=k
                )
            parts[k] = split
        if parts["chosen"][0] != parts["rejected"][0]:
            raise DataFormatError(
                path,
                "the dialogue before the last Assistant turn differs from the one in 'chosen' "
                "(both must share the same prompt)",
                line=line,
                field="rejected",
            )
        values = {
            "prompt": parts["chosen"][0],
            "chosen": parts["chosen"][1],
            "rejected": parts["rejected"][1],
        }
    values["meta"] = meta
    return values


# --------------------------------------------------------------------------------------------- loading


def _short(err: DataFormatError) -> str:
    """``line 4 (chosen: expected a non-empty string, got int)`` for summaries."""
    return f"line {err.line} ({err.field + ': ' if err.field else ''}{err.problem})"


def _first_problem(path: str | Path, line_no: int, rec: dict | DataFormatError) -> DataFormatError:
    """The error a record gives when validated as the kind its keys suggest."""
    if isinstance(rec, DataFormatError):
        return rec
    guess = guess_kind(rec)
    if guess is None:
        return DataFormatError(
            path,
            f"cannot tell the format from keys {sorted(rec)}: expected {{prompt, chosen, rejected}}, "
            "{chosen, rejected} (Anthropic-HH), {prompt, response} or {prompt}",
            line=line_no,
        )
    try:
        parse_record(path, line_no, rec, guess)
    except DataFormatError as e:
        return e
    raise AssertionError("record is valid")  # pragma: no cover - only called on invalid records


def _load(
    path: str | Path, accept: tuple[RecordKind, ...], on_error: OnError, max_line_bytes: int, what: str
) -> tuple[RecordKind, list[tuple[int, dict[str, Any]]]]:
    """Read, detect and validate a file; returns its kind and the ``(line_no, parsed)`` of good lines."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    records = list(_read_records(path, max_line_bytes))

    # 1. Detect the kind from the first record that is valid for the kind its keys suggest.
    kind: RecordKind | None = None
    for line_no, rec in records:
        if isinstance(rec, dict) and (guess := guess_kind(rec)) is not None:
            try:
                parse_record(path, line_no, rec, guess)
            except DataFormatError:
                continue
            kind = guess
            break
    if kind is None:  # nothing valid: the first problem is the most useful one to report
        errors = [_first_problem(path, line_no, rec) for line_no, rec in records]
        if on_error == "raise":
            raise errors[0]
        raise DataFormatError(
            path,
            f"no valid records left after skipping all {len(errors)} lines; first {_short(errors[0])}",
            hint="Fix the file.",
        )
    if kind not in accept:
        raise DataFormatError(
            path,
            f"{what} need a {' or '.join(repr(k) for k in accept)} file, but this one is {kind!r} "
            f"(keys {sorted(_FIELDS[kind])})",
            hint="Point this data key at a file of the right kind.",
        )

    # 2. Validate every record against the detected kind.
    good: list[tuple[int, dict[str, Any]]] = []
    bad: list[DataFormatError] = []
    for line_no, rec in records:
        try:
            if isinstance(rec, DataFormatError):
                raise rec
            good.append((line_no, parse_record(path, line_no, rec, kind)))
        except DataFormatError as e:
            if on_error == "raise":
                raise
            bad.append(e)
    if bad:
        shown = ", ".join(_short(e) for e in bad[:5])
        more = f", and {len(bad) - 5} more" if len(bad) > 5 else ""
        log.warning("skipped %d of %d lines in %s: %s%s", len(bad), len(records), path, shown, more)
    return kind, good


def load_preferences(
    path: str | Path, on_error: OnError = "raise", max_line_bytes: int = MAX_LINE_BYTES
) -> list[PreferencePair]:
    """Load preference pairs from an explicit ``{prompt, chosen, rejected}`` or an Anthropic-HH file.

    Args:
        path: The JSONL file.
        on_error: "raise" on the first bad line, or "skip" bad lines (one summary warning).
        max_line_bytes: Longest accepted line.

    Returns:
        The pairs in file order.

    Raises:
        DataFormatError: For any bad line (with "raise"), or when no valid pair is left.
    """
    _, good = _load(path, ("explicit", "hh"), on_error, max_line_bytes, "preference pairs")
    return [PreferencePair(r["prompt"], r["chosen"], r["rejected"], r["meta"]) for _, r in good]


def load_sft(
    path: str | Path, on_error: OnError = "raise", max_line_bytes: int = MAX_LINE_BYTES
) -> list[SFTExample]:
    """Load demonstrations from a ``{prompt, response}`` file.

    Args:
        path: The JSONL file.
        on_error: "raise" on the first bad line, or "skip" bad lines (one summary warning).
        max_line_bytes: Longest accepted line.

    Returns:
        The examples in file order.

    Raises:
        DataFormatError: For any bad line (with "raise"), or when no valid example is left.
    """
    _, good = _load(path, ("sft",), on_error, max_line_bytes, "SFT examples")
    return [SFTExample(r["prompt"], r["response"], r["meta"]) for _, r in good]


def load_prompts(
    path: str | Path, on_error: OnError = "raise", max_line_bytes: int = MAX_LINE_BYTES, id_offset: int = 0
) -> list[PromptRecord]:
    """Load the distinct prompts of a prompt-only, SFT, explicit-preference or HH file.

    Prompts are deduplicated by text, keeping the first occurrence (its id and meta) and file order.

    Args:
        path: The JSONL file.
        on_error: "raise" on the first bad line, or "skip" bad lines (one summary warning).
        max_line_bytes: Longest accepted line.
        id_offset: Added to index-derived ids (records without an "id"), so that two files can be
            combined without clashes.

    Returns:
        The prompt records in file order.

    Raises:
        DataFormatError: For any bad line (with "raise"), a non-integer or clashing "id", or when no
            valid prompt is left.
    """
    _, good = _load(path, ("prompt", "sft", "explicit", "hh"), on_error, max_line_bytes, "prompts")
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
                path, f"expected an integer, got {_json_type(rid)}", line=line_no, field="id"
            )
        if r["prompt"] in seen_prompts:
            continue
        if rid in id_lines:
            raise DataFormatError(
                path,
                f"id {rid} is already used by line {id_lines[rid]} for another prompt (ids must be unique)",
                line=line_no,
                field="id",
            )
        seen_prompts.add(r["prompt"])
        id_lines[rid] = line_no
        out.append(PromptRecord(rid, r["prompt"], meta))
    return out
