"""The failure table's cases about bad input (``tests/test_failure_table.py`` runs them through
``python train.py``): rows ``data_line`` to ``sampling`` of docs/failures.md — bad JSONL lines and files,
prompts longer than the context, unknown group options and other command-line errors, bad conversational
data, the hints' suggested overrides, and a folder's ``generation_config.json``. Each case is a
``check(w, tmp, *args)`` added to :data:`CASES` with ``@case(row, name)`` or ``refused(…)`` (exit status 2).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from train_cli import ROOT, Cases, World, expect, sha, write_jsonl

from lit_rlhf.run.errors import EXIT_USER_ERROR

BAD = ROOT / "tests" / "bad_inputs"

CASES = Cases()
case, refused = CASES.case, CASES.refused


# ---- data_line: a bad line names file:line:field (9), or is skipped with on_error=skip
DATA_LINES = [  # (file in tests/bad_inputs, task, line, field, what is wrong)
    ("malformed_json", "reward_model", 2, None, "malformed JSON"),
    ("not_an_object", "reward_model", 2, None, "expected a JSON object"),
    ("missing_field", "reward_model", 3, "rejected", "missing"),
    ("empty_field", "reward_model", 2, "chosen", "expected a non-empty string, got an empty string"),
    ("wrong_type", "reward_model", 2, "chosen", "expected a non-empty string, got int"),
    ("chosen_equals_rejected", "reward_model", 2, "rejected", "identical to 'chosen'"),
    ("hh_no_assistant", "reward_model", 2, "rejected", "no '\\n\\nAssistant:' turn"),
    ("hh_prompt_mismatch", "reward_model", 3, "rejected", "differs"),
    ("sft_empty_response", "sft", 2, "response", "non-empty string"),
]


def bad_line(w: World, tmp: Path, name: str, task: str, line: int, field: str | None, problem: str) -> None:
    path = BAD / f"{name}.jsonl"
    before = sha(path)
    run = w.train_py(tmp, *(w.rm(path) if task == "reward_model" else w.sft_job(path)))
    where = f"{path}:{line}: field '{field}': " if field else f"{path}:{line}: "
    expect(run, EXIT_USER_ERROR, f"lit_rlhf: error: {where}", problem, "task.datamodule.on_error=skip")
    assert sha(path) == before


for _name, *_rest in DATA_LINES:
    case("data_line", _name, _name, *_rest)(bad_line)


@case("data_line", "on_error_skip")
def skip_bad_lines(w: World, tmp: Path) -> None:
    bad = [
        '{"prompt": "p", "chosen": 7, "rejected": "no"}',
        '{"prompt": "p"',
        '{"prompt": "p", "chosen": "a", "rejected": "a"}',
    ]
    path = tmp / "mixed.jsonl"
    path.write_text(w.pairs.read_text() + "\n".join(bad) + "\n")
    run = w.train_py(tmp, *w.rm(path), "task.datamodule.on_error=skip")
    expect(run, 0, f"skipped 3 of 43 lines in {path}: line 41 (chosen: expected a non-empty string")
    assert run.out.count("skipped 3 of 43 lines") == 1  # logged once, not once per line
    assert (tmp / "run" / "model" / "config.json").is_file()


@case("data_line", "dataset_row")
def bad_dataset_row(w: World, tmp: Path) -> None:
    """A bad row of a parquet file or a save_to_disk folder is named by its split and index (and the user's
    column, under data.columns); the data.path alone selects the user's data."""
    import datasets  # noqa: PLC0415

    rows = [{"q": f"p{i}", "chosen": "yes", "rejected": "no"} for i in range(3)]
    ds = datasets.Dataset.from_list([*rows, {"q": "p", "chosen": "yes", "rejected": None}])
    ds.to_parquet(str(path := tmp / "pairs.parquet"))
    before = sha(path)
    job = [o for o in w.rm(path) if o != "data=jsonl"]
    run = w.train_py(tmp, *job, "data.columns.prompt=q")
    where = f"lit_rlhf: error: {path}: split 'train', row 3: field 'rejected': "
    expect(run, EXIT_USER_ERROR, where + "expected a non-empty string, got null",
           "Fix or remove this row", "task.datamodule.on_error=skip")  # fmt: skip
    assert sha(path) == before


# ---- data_file: empty, blank-only, missing, non-UTF-8, a 1.5 MB line, a BOM (accepted)
def bad_file(w: World, tmp: Path, make: Callable[[Path], Path], *fragments: str) -> None:
    path = make(tmp)
    before = sha(path) if path.is_file() else None
    run = w.train_py(tmp, *w.rm(path))
    expect(run, EXIT_USER_ERROR, *(f.format(path=path) for f in fragments))
    assert (sha(path) if path.is_file() else None) == before


def latin1(tmp: Path) -> Path:
    good = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    (path := tmp / "latin1.jsonl").write_bytes(good + good.replace(b'"a"', b'"caf\xe9"'))  # é at byte 15
    return path


def huge_line(tmp: Path) -> Path:
    huge = {"prompt": "a", "chosen": "x" * 1_500_000, "rejected": "c"}
    return write_jsonl(tmp / "huge.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, huge])


for _name, _make, _fragments in [
    ("empty", lambda tmp: BAD / "empty.jsonl", ["lit_rlhf: error: {path}: ", "empty (no JSON records)"]),
    ("blank_lines_only", lambda tmp: BAD / "blank_lines_only.jsonl", ["{path}: ", "empty (no JSON records)"]),
    ("missing", lambda tmp: tmp / "nope.jsonl", ["lit_rlhf: error: {path}: file not found"]),
    ("non_utf8", latin1, ["lit_rlhf: error: {path}:2: ", "UTF-8", "0xe9", "byte offset 15 of the line"]),
    ("huge_line", huge_line, ["lit_rlhf: error: {path}:2: ", "longer than 1000000 bytes"]),
]:
    case("data_file", _name, _make, *_fragments)(bad_file)


@case("data_file", "hub_offline")
def hub_offline(w: World, tmp: Path) -> None:
    run = w.train_py(tmp, *w.rm(Path("trl-lib/ultrafeedback_binarized")), env={"HF_DATASETS_OFFLINE": "1"})
    expect(run, EXIT_USER_ERROR, "lit_rlhf: error: trl-lib/ultrafeedback_binarized: the Hugging Face Hub is "
           "unreachable", "save_to_disk(FOLDER)", "data.path=FOLDER")  # fmt: skip
    assert run.out.count("lit_rlhf: error:") == 1


@case("data_file", "utf8_bom_accepted")
def bom(w: World, tmp: Path) -> None:
    (path := tmp / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + w.pairs.read_bytes())
    expect(w.train_py(tmp, *w.rm(path)), 0)
    assert (tmp / "run" / "model" / "config.json").is_file()


# ---- long_prompt: truncated, trained on, and said once
@case("long_prompt", "sft")
def long_prompt(w: World, tmp: Path) -> None:
    long = " ".join(["about cats and soup"] * 60)  # > 128 tokens: longer than task.datamodule.max_length
    path = write_jsonl(tmp / "long.jsonl", [{"prompt": f"{long} {i}", "response": "purr"} for i in range(40)])
    run = w.train_py(tmp, *w.sft_job(path))
    expect(run, 0, "prompts are longer than task.datamodule.max_prompt_tokens=16 tokens")
    assert (tmp / "run" / "model" / "config.json").is_file()


# ---- unknown_option: Hydra's own message, exit status 2
refused_options = ("Could not find 'transform/logsigmod'", "Available options in 'transform'", "\tlogsigmoid")


@case("unknown_option", "transform")
def unknown_option(w: World, tmp: Path) -> None:
    expect(w.train_py(tmp, "+transform=logsigmod"), EXIT_USER_ERROR, *refused_options)


# ---- cli_error: the table's 6; 3 are also rows of their own (data_line-malformed_json,
# bad_ckpt-missing, unknown_option-transform) and are run there
refused("cli_error", "missing_model", lambda w, t: [*w.rm(w.pairs), "model.name_or_path=/nonexistent"],
        "model folder /nonexistent does not exist (model.name_or_path)")  # fmt: skip
refused("cli_error", "missing_value", lambda w, t: w.rm(w.pairs)[:-4],  # data=jsonl without data.path
        "config key data.path has no value")  # fmt: skip
refused("cli_error", "bad_value", lambda w, t: [*w.ppo(), "task.module.temperature=0"],
        "task.module.temperature must be > 0, got 0")  # fmt: skip


@case("cli_error", "sweep_runs_the_other_jobs")
def sweep_with_bad_data(w: World, tmp: Path) -> None:
    bad = BAD / "malformed_json.jsonl"
    run = w.train_py(tmp, *w.rm(bad), "seed=0,1", multirun=True)
    expect(run, 1, "Error executing job with overrides")  # a failed sweep job ends as Hydra ends it
    assert run.out.count(f"[ERROR] - lit_rlhf: error: {bad}:2: malformed JSON") == 2  # job 2 still ran


# ---- conversation: conversational lines name file:line:field, a tokenizer without template its folder
Q, BLUE, GREEN = (
    {"role": r, "content": c} for r, c in [("user", "Sky?"), ("assistant", "Blue."), ("assistant", "Green.")]
)
SEA = {**Q, "content": "Sea?"}
PAIR = {"prompt": [Q], "chosen": [BLUE], "rejected": [GREEN]}
CONVERSATIONS = [  # (name, task, bad second line after a good one, field, what is wrong)
    ("no_role", "reward_model", {**PAIR, "prompt": [{"content": "hi"}]}, "prompt[0].role", "missing"),
    ("unknown_role", "reward_model", {**PAIR, "prompt": [{"role": "bot", "content": "hi"}]}, "prompt[0].role",
     "unknown role 'bot'"),
    ("content_not_a_string", "reward_model", {**PAIR, "chosen": [{"role": "assistant", "content": 3}]},
     "chosen[0].content", "expected a string, got int"),
    ("empty_list", "reward_model", {**PAIR, "prompt": []}, "prompt", "got an empty list"),
    ("list_for_a_string", "reward_model", {"prompt": "a", "chosen": [BLUE], "rejected": "c"}, "chosen",
     "expected a non-empty string (as 'prompt' is a string), got list"),
    ("implicit_prompts_differ", "reward_model", {"chosen": [Q, BLUE], "rejected": [SEA, GREEN]}, "rejected",
     "differs from the one in 'chosen'"),
    ("sft_not_ending_with_assistant", "sft", {"messages": [Q, BLUE, Q]}, "messages[2].role",
     "the last message must be the assistant's reply"),
]  # fmt: skip


def bad_conversation(w: World, tmp: Path, task: str, bad: dict, field: str, problem: str) -> None:
    first = (
        {"messages": [Q, BLUE]}
        if task == "sft"
        else PAIR
        if "prompt" in bad
        else {"chosen": [Q, BLUE], "rejected": [Q, GREEN]}
    )
    path = write_jsonl(tmp / "chat.jsonl", [first, bad])
    job = w.rm(path, "chat") if task == "reward_model" else w.sft_job(path, "chat")
    expect(w.train_py(tmp, *job), EXIT_USER_ERROR, f"lit_rlhf: error: {path}:2: field '{field}': ", problem)


for _name, *_rest in CONVERSATIONS:
    case("conversation", _name, *_rest)(bad_conversation)


@case("conversation", "tokenizer_without_template")
def no_template(w: World, tmp: Path) -> None:
    path = write_jsonl(tmp / "chat.jsonl", [PAIR, {**PAIR, "chosen": [GREEN], "rejected": [BLUE]}])
    run = w.train_py(tmp, *w.rm(path))  # the GPT-2 folder has no chat template
    expect(run, EXIT_USER_ERROR, f"tokenizer '{w.m['policy']}' has no chat template", "data.chat_template",
           "model.tokenizer_path")  # fmt: skip


# ---- hint: the override a message suggests is a real key and does what it says
@case("hint", "on_error_skip")
def follow_line_hint(w: World, tmp: Path) -> None:
    path = tmp / "one_bad.jsonl"
    path.write_text(w.pairs.read_text() + '{"prompt": "p", "chosen": 7, "rejected": "no"}\n')
    first = w.train_py(tmp / "a", *w.rm(path))
    expect(first, EXIT_USER_ERROR, f"{path}:41: field 'chosen'")
    (override,) = re.findall(r"set (\S+=\S+) to skip", first.out)
    expect(w.train_py(tmp / "b", *w.rm(path), override), 0, f"skipped 1 of 41 lines in {path}")


@case("hint", "data_path")
def follow_file_hint(w: World, tmp: Path) -> None:
    first = w.train_py(tmp / "a", *w.rm(tmp / "nope.jsonl"))
    expect(first, EXIT_USER_ERROR, "nope.jsonl: file not found")
    keys = re.findall(r"\bdata\.\w+", first.out.split("lit_rlhf: error: ")[1].splitlines()[0])
    assert keys and keys[0] == "data.path", first.out
    expect(w.train_py(tmp / "b", *w.rm(tmp / "nope.jsonl"), f"{keys[0]}={w.pairs}"), 0)


# ---- sampling: a folder's generation_config.json changes nothing; truncated sampling is refused
@case("sampling", "shipped_generation_config")
def shipped_generation_config(w: World, tmp: Path) -> None:
    expect(w.train_py(tmp, *w.ppo(policy="gencfg")), 0)
    assert json.loads((w.m["gencfg"] / "generation_config.json").read_text())["repetition_penalty"] == 3.0


refused("sampling", "top_k", lambda w, t: [*w.ppo(), "task.module.top_k=50"], "task.module.top_k=50")
refused("sampling", "top_p", lambda w, t: [*w.ppo(), "task.module.top_p=0.9"], "task.module.top_p=0.9")
