"""Where records come from: a JSONL file, or anything the Hugging Face ``datasets`` library loads.

``data.path`` is read as

* a ``.jsonl`` file: line by line (:mod:`lit_rlhf.data.jsonl`), errors name ``file:line``;
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: ``datasets.load_from_disk``;
* a ``.parquet``, ``.arrow`` or ``.json`` file: ``datasets.load_dataset("parquet" | "arrow" | "json", …)``;
* anything else that looks like a Hub id (``owner/name``): ``datasets.load_dataset(id, name=subset,
  split=split, revision=revision)`` — which needs a network; offline it is one line saying so and how to
  use a local folder instead.

Rows become the same records as JSONL lines (TRL's standard and conversational formats, detected the same
way, :mod:`lit_rlhf.data.formats`); a bad row is named by its split and 0-based index. ``data.columns``
maps the record's fields to the dataset's columns (``data.columns.prompt=question``); the other columns
are kept in each record's ``meta`` (reward functions receive them).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_rlhf.data.formats import FORMATS, DataFormatError, RecordKind, guess_kind, parse_record

log = logging.getLogger(__name__)
DATASET_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".json": "json"}
COLUMNS = ("prompt", "chosen", "rejected", "completion", "response", "messages")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
FOLDER_HINT = (
    "Check data.path: a .jsonl/.json/.parquet/.arrow file, a folder written by Dataset.save_to_disk, "
    "or a Hub id."
)


@dataclass(frozen=True)
class DatasetOptions:
    """Which part of a ``datasets`` source is read, and how its columns map to record fields.

    Args:
        split: The split of a Hub dataset or a saved ``DatasetDict`` folder (a single file is one split,
            ``train``).
        subset: The Hub dataset's configuration name (``load_dataset(…, name=subset)``).
        revision: The Hub dataset's git revision (branch, tag or commit).
        columns: Record field → dataset column, e.g. ``{"prompt": "question"}``; fields left out or None
            keep their own name. Fields: prompt, chosen, rejected, completion, response, messages.
    """

    split: str = "train"
    subset: str | None = None
    revision: str | None = None
    columns: Mapping[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.columns) - set(COLUMNS))
        if unknown:
            raise ValueError(f"data.columns has unknown fields {unknown}; expected some of {list(COLUMNS)}")

    @classmethod
    def of(cls, options: DatasetOptions | Mapping[str, Any] | None) -> DatasetOptions:
        """From a mapping (a datamodule's ``dataset`` argument, the ``data`` group's keys) or None."""
        if options is None or isinstance(options, DatasetOptions):
            return options or cls()
        opts = {k: v for k, v in dict(options).items() if v is not None}
        return cls(**{**opts, "columns": dict(opts.get("columns") or {})})

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (what a checkpoint's hyperparameters may hold under ``weights_only``)."""
        return {"split": self.split, "subset": self.subset, "revision": self.revision,
                "columns": {str(k): v for k, v in self.columns.items()}}  # fmt: skip

    def mapping(self) -> dict[str, str]:
        """Dataset column → record field, for the columns that are renamed."""
        return {col: f for f, col in self.columns.items() if col is not None and col != f}


def is_jsonl(path: str | Path) -> bool:
    """Whether ``path`` is read by the JSONL reader (a ``.jsonl`` name, or a file that is no dataset)."""
    p = Path(path)
    if p.suffix.lower() == ".jsonl":
        return True
    return p.is_file() and p.suffix.lower() not in DATASET_SUFFIXES


def hub_id(path: str | Path) -> bool:
    """Whether ``path``, which is not on disk, reads as a Hub id (``owner/name``) rather than a file."""
    text = str(path)
    return not Path(text).exists() and bool(HUB_ID.match(text)) and Path(text).suffix == ""


def rename(record: dict, mapping: Mapping[str, str], path: str | Path, line: int, split: str | None) -> dict:
    """``record`` with its mapped columns renamed to record fields (a missing one is an error)."""
    if not mapping:
        return record
    out = {k: v for k, v in record.items() if k not in mapping and k not in mapping.values()}
    for col, f in mapping.items():
        if col not in record:
            raise DataFormatError(
                path,
                f"no column '{col}' (data.columns.{f}={col}); it has {sorted(record)}",
                line=line,
                split=split,
                hint="Set data.columns to the dataset's column names.",
            )
        out[f] = record[col]
    return out


def field_column(err: DataFormatError, mapping: Mapping[str, str]) -> DataFormatError:
    """``err`` naming the dataset's column instead of the record field it was mapped to."""
    if err.field is None or not mapping:
        return err
    back = {f: col for col, f in mapping.items()}
    head = re.match(r"[^.\[]+", err.field).group(0)
    if head not in back:
        return err
    named = back[head] + err.field[len(head) :]
    return DataFormatError(err.path, err.problem, line=err.line, field=named, split=err.split)


def _quiet_datasets() -> Any:
    import datasets  # noqa: PLC0415  (an optional dependency: pip install 'lit_rlhf[hf-datasets]')

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    return datasets


def load_rows(path: str | Path, options: DatasetOptions) -> tuple[str, list[dict]]:
    """``(split, rows)`` of a ``datasets`` source: a saved folder, a parquet/arrow/JSON file or a Hub id.

    Raises:
        DataFormatError: The source is missing, not a dataset, has no such split, or (a Hub id) the Hub
            is unreachable — one line each, naming ``data.path`` / ``data.split``.
    """
    try:
        datasets = _quiet_datasets()
    except ImportError:
        raise DataFormatError(
            path, "reading datasets needs the `datasets` package", hint="pip install 'lit_rlhf[hf-datasets]'"
        ) from None
    p = Path(path)
    split = options.split
    if p.is_dir():
        try:
            ds = datasets.load_from_disk(str(p))
        except FileNotFoundError as err:
            raise DataFormatError(
                path, f"not a dataset folder written by save_to_disk ({err})", hint=FOLDER_HINT
            ) from None
    elif p.is_file():
        ds, split = datasets.load_dataset(DATASET_SUFFIXES[p.suffix.lower()], data_files=str(p)), "train"
    elif hub_id(path):
        ds = _from_hub(datasets, str(path), options)
    else:
        raise DataFormatError(path, "file not found")
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataFormatError(
                path, f"has no split '{split}' (data.split); it has {sorted(ds)}", hint=FOLDER_HINT
            )
        ds = ds[split]
    else:
        split = str(ds.split or split)
    if len(ds) == 0:
        raise DataFormatError(path, f"split '{split}' is empty (no rows)")
    return split, ds.to_list()


def _from_hub(datasets: Any, name: str, options: DatasetOptions) -> Any:
    """``load_dataset`` of a Hub id, with one line for an unreachable Hub."""
    where = f"data.path={name}"
    try:
        return datasets.load_dataset(
            name, name=options.subset, split=options.split, revision=options.revision
        )
    except ConnectionError as err:
        raise DataFormatError(
            name,
            f"the Hugging Face Hub is unreachable ({type(err).__name__}: offline or no network), so "
            f"{where} cannot be downloaded",
            hint="Where there is a network, save it with `datasets.load_dataset(...).save_to_disk(FOLDER)` "
            "(or to a .parquet file), copy it here and set data.path=FOLDER.",
        ) from None
    except (FileNotFoundError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataFormatError(name, f"cannot load it as a Hub dataset: {first}", hint=FOLDER_HINT) from None


class Source:
    """The records of ``path`` — a JSONL file or a ``datasets`` source (:mod:`lit_rlhf.data.sources`) —
    as ``(line or row index, record or error)``, columns renamed by ``data.columns``.

    Args:
        path: ``data.path`` (or another data key's value).
        options: Split, subset, revision and column mapping.
        read_jsonl: Reads ``path`` as JSONL: ``(line, record or error)`` per line.
    """

    def __init__(
        self,
        path: str | Path,
        options: DatasetOptions,
        read_jsonl: Callable[[], Iterable[tuple[int, dict | DataFormatError]]],
    ) -> None:
        self.path, self.mapping = path, options.mapping()
        if is_jsonl(path):
            self.split, records = None, list(read_jsonl())
        else:
            self.split, rows = load_rows(path, options)
            records = list(enumerate(rows))
            missing = {c: f for c, f in self.mapping.items() if c not in rows[0]}
            if missing:  # a dataset's columns are the same in every row: one error for the dataset
                (col, f), *_ = missing.items()
                raise DataFormatError(
                    path,
                    f"no column '{col}' (data.columns.{f}={col}); its columns are {sorted(rows[0])}",
                    hint="Set data.columns.<field> to one of the dataset's columns.",
                )
        self.records = [
            (n, rec if isinstance(rec, DataFormatError) else rename(rec, self.mapping, path, n, self.split))
            for n, rec in records
        ]

    def parse(self, line_no: int, rec: dict, kind: RecordKind) -> dict[str, Any]:
        try:
            return parse_record(self.path, line_no, rec, kind, self.split)
        except DataFormatError as err:
            raise field_column(err, self.mapping) from None

    def first_problem(self, line_no: int, rec: dict | DataFormatError) -> DataFormatError:
        """The error a record gives when validated as the kind its keys suggest."""
        if isinstance(rec, DataFormatError):
            return rec
        guess = guess_kind(rec)
        if guess is None:
            return DataFormatError(
                self.path,
                f"cannot tell the format from keys {sorted(rec)}: expected {FORMATS}"
                + (" (map columns with data.columns.<field>=<column>)" if self.split else ""),
                line=line_no,
                split=self.split,
            )
        try:
            self.parse(line_no, rec, guess)
        except DataFormatError as e:
            return e
        raise AssertionError("record is valid")  # pragma: no cover - only called on invalid records
