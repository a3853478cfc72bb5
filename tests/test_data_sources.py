"""``data.path`` as a Hugging Face dataset: every TRL format, standard and conversational, written locally
as a ``save_to_disk`` folder and as parquet, loads exactly as the same records do from JSONL; column
mapping; a bad row named by split and index; a Hub id offline is one line (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonl_helpers import BLUE, GREEN, SYS, Q, write_jsonl

from lit_rlhf.data.jsonl import DataFormatError, load_preferences, load_prompts, load_sft
from lit_rlhf.data.sources import DatasetOptions, hub_id, is_jsonl

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()

Q2 = {"role": "user", "content": "And the grass?"}
# TRL's formats (https://huggingface.co/docs/trl/dataset_formats), standard then conversational, and the
# loader each is read with
PAIRS = [{"prompt": f"sky {i}?", "chosen": "blue", "rejected": "green"} for i in range(3)]
HH = "\n\nHuman: sky {i}?\n\nAssistant: {a}"
FORMATS = {
    "preference": (load_preferences, PAIRS),
    "preference_conv": (load_preferences, [{"prompt": [SYS, Q], "chosen": [BLUE], "rejected": [GREEN]}] * 3),
    "implicit": (load_preferences, [{"chosen": HH.format(i=i, a="blue"), "rejected": HH.format(i=i, a="no")}
                                    for i in range(3)]),
    "implicit_conv": (load_preferences, [{"chosen": [Q, BLUE], "rejected": [Q, GREEN]}] * 3),
    "prompt_completion": (load_sft, [{"prompt": f"sky {i}?", "completion": "blue"} for i in range(3)]),
    "prompt_completion_conv": (load_sft, [{"prompt": [Q], "completion": [BLUE]}] * 3),
    "messages_conv": (load_sft, [{"messages": [Q, BLUE]}, {"messages": [Q, BLUE, Q2, GREEN]}]),
    "prompt_only": (load_prompts, [{"prompt": f"sky {i}?"} for i in range(3)]),
    "prompt_only_conv": (load_prompts, [{"prompt": [Q]}, {"prompt": [SYS, Q]}]),
}  # fmt: skip


def save(tmp: Path, name: str, rows: list[dict]) -> dict[str, Path]:
    """The rows as JSONL, a save_to_disk folder and a parquet file."""
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp / name))
    ds.to_parquet(str(tmp / f"{name}.parquet"))
    return {"jsonl": write_jsonl(tmp / f"{name}.jsonl", rows), "folder": tmp / name,
            "parquet": tmp / f"{name}.parquet"}  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_trl_format_loads_from_a_folder_and_parquet_as_from_jsonl(tmp_path: Path, fmt: str) -> None:
    load, rows = FORMATS[fmt]
    files = save(tmp_path, fmt, rows)
    expected = load(files["jsonl"])
    assert expected and load(files["folder"]) == expected and load(files["parquet"]) == expected


def test_a_dataset_dict_folder_reads_the_split_it_is_asked_for(tmp_path: Path) -> None:
    train = [{"prompt": f"t{i}", "chosen": "a", "rejected": "b"} for i in range(3)]
    test = [{"prompt": "x", "chosen": "c", "rejected": "d"}]
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [p.prompt for p in load_preferences(tmp_path / "dd")] == ["t0", "t1", "t2"]
    assert [p.prompt for p in load_preferences(tmp_path / "dd", dataset={"split": "test"})] == ["x"]
    with pytest.raises(
        DataFormatError, match=r"has no split 'dev' \(data.split\); it has \['test', 'train'\]"
    ):
        load_preferences(tmp_path / "dd", dataset={"split": "dev"})


def test_columns_map_fields_and_the_other_columns_are_kept(tmp_path: Path) -> None:
    rows = [
        {"question": "2+2?", "answer": "4", "max_words": 3},
        {"question": "3+3?", "answer": "6", "max_words": None},
    ]
    files = save(tmp_path, "qa", rows)
    opts = {"columns": {"prompt": "question", "chosen": None}}
    for path in files.values():  # JSONL files are mapped too
        records = load_prompts(path, dataset=opts)
        assert [(r.prompt, r.meta) for r in records] == [
            ("2+2?", {"answer": "4", "max_words": 3}),
            ("3+3?", {"answer": "6", "max_words": None}),
        ]
    with pytest.raises(
        DataFormatError, match=r"no column 'query' \(data.columns.prompt=query\); its columns"
    ):
        load_prompts(files["parquet"], dataset={"columns": {"prompt": "query"}})
    with pytest.raises(ValueError, match="data.columns has unknown fields"):
        DatasetOptions.of({"columns": {"answer": "x"}})


def test_a_bad_row_is_named_by_split_index_and_column(tmp_path: Path) -> None:
    rows = [{"q": "a", "chosen": "yes", "rejected": "no"}] * 3 + [{"q": "b", "chosen": "", "rejected": "no"}]
    files = save(tmp_path, "bad", rows)
    opts = {"columns": {"prompt": "q"}}
    for kind in ("folder", "parquet"):
        with pytest.raises(DataFormatError) as info:
            load_preferences(files[kind], dataset=opts)
        assert str(info.value).startswith(
            f"{files[kind]}: split 'train', row 3: field 'chosen': expected a non-empty"
        )
        assert "Fix or remove this row" in str(info.value)
    conv = [
        {"prompt": [Q], "chosen": [BLUE], "rejected": [GREEN]},
        {"prompt": [Q], "chosen": [BLUE], "rejected": [Q]},
    ]
    files = save(tmp_path, "bad_conv", conv)
    with pytest.raises(
        DataFormatError, match=r"split 'train', row 1: field 'rejected\[0\].role': expected 'assistant'"
    ):
        load_preferences(files["folder"])
    with pytest.raises(DataFormatError, match=r"field 'question\[0\].role'"):  # named by the user's column
        bad = [{"question": [BLUE], "chosen": [BLUE], "rejected": [GREEN]}]
        load_preferences(
            save(tmp_path, "q_conv", bad)["parquet"], dataset={"columns": {"prompt": "question"}}
        )


def test_bad_rows_are_skipped_with_one_warning_naming_rows(tmp_path: Path, caplog) -> None:
    rows = [{"prompt": f"p{i}", "chosen": "yes", "rejected": "no"} for i in range(3)]
    rows.insert(1, {"prompt": "p", "chosen": "same", "rejected": "same"})
    pairs = load_preferences(save(tmp_path, "skip", rows)["folder"], on_error="skip")
    assert [p.prompt for p in pairs] == ["p0", "p1", "p2"]
    assert "skipped 1 of 4 rows" in caplog.text and "row 1 (rejected: identical" in caplog.text


def test_sources_are_told_apart_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("{}\n")
    assert is_jsonl("x.jsonl") and is_jsonl(tmp_path / "a.txt") and not is_jsonl(tmp_path)
    assert hub_id("trl-lib/tldr") and hub_id("imdb") and not hub_id("nope.jsonl") and not hub_id("./a/b/c")
    with pytest.raises(DataFormatError, match="nope.parquet: file not found"):
        load_prompts(tmp_path / "nope.parquet")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataFormatError, match="not a dataset folder written by save_to_disk"):
        load_prompts(tmp_path / "empty_dir")


def test_a_hub_id_offline_is_one_line_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # HF_DATASETS_OFFLINE=1
    with pytest.raises(DataFormatError) as info:
        load_prompts("trl-lib/tldr", dataset={"split": "train", "revision": "main"})
    message = str(info.value)
    assert "\n" not in message and message.startswith("trl-lib/tldr: the Hugging Face Hub is unreachable")
    assert "save_to_disk(FOLDER)" in message and "data.path=FOLDER" in message


@pytest.mark.slow  # huggingface_hub retries the unreachable host five times (its back-off waits skipped)
def test_a_hub_id_without_a_network_is_one_line_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.utils._http as hub_http  # noqa: PLC0415

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)  # 1 + 2 + 4 + … s of back-off
    with pytest.raises(
        DataFormatError, match=r"^no-such-owner/no-such-set: the Hugging Face Hub is unreachable"
    ):
        load_prompts("no-such-owner/no-such-set")


def test_data_path_on_the_default_world_means_your_data(tmp_path: Path) -> None:
    """``python train.py data.path=X`` (no ``data=jsonl``): the world is replaced by X with the user's keys;
    the task datamodules get split, subset, revision and columns."""
    from hydra.utils import instantiate  # noqa: PLC0415

    from conftest import hydra_cfg  # noqa: PLC0415
    from lit_rlhf.run.stages import own_data  # noqa: PLC0415

    with hydra_cfg(tmp_path, ["task=grpo", "data.path=q.parquet", "data.columns.prompt=question"]) as cfg:
        assert cfg.data.world is not None  # as composed: the default group
        own_data(cfg)
        assert cfg.data.world is None and cfg.data.gold is False and cfg.data.tokenizer is None
        assert cfg.task.datamodule.train_path == "q.parquet" and cfg.reward.helpful.data == "q.parquet"
        dataset = instantiate(cfg.task.datamodule.dataset)
        assert DatasetOptions.of(dataset).mapping() == {"question": "prompt"}
    with hydra_cfg(tmp_path, ["task=sft"]) as cfg:  # without data.path the world stays
        assert own_data(cfg).data.world is not None
        assert cfg.task.datamodule.dataset.split == "train"
