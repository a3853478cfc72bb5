"""User-input errors end in one message and a non-zero status, without a traceback; bugs keep theirs.

Unit tests of the classification (:func:`lit_rlhf.run.errors.user_message`) and of the wrapper around the
task function, then ``python train.py …`` on docs/failures.md's cases that fail before any training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf, read_write
from omegaconf.errors import ConfigKeyError
from tiny_hf import make_config, make_model_folder
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import ROOT, hydra_cfg
from lit_rlhf.data.jsonl import DataFormatError
from lit_rlhf.run.errors import EXIT_USER_ERROR, UserError, exit_on_user_error, user_message

BAD = ROOT / "tests" / "bad_inputs"
TRACEBACK = "Traceback (most recent call last)"


def raised(fn) -> BaseException:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the tests look at whatever was raised
        return e
    raise AssertionError("nothing raised")


# ------------------------------------------------------------------ classification
@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            DataFormatError("d.jsonl", "expected a string", line=3, field="chosen", hint="Fix it."),
            "d.jsonl:3: field 'chosen': expected a string. Fix it.",
        ),
        (ValueError("task.module.lr must be > 0, got 0"), "task.module.lr must be > 0, got 0"),
        (FileNotFoundError("ckpt_path=/x.ckpt does not exist"), "ckpt_path=/x.ckpt does not exist"),
        (FloatingPointError("3 consecutive PPO batches"), "3 consecutive PPO batches"),
        (
            KeyError("reward models ['x'] have no entry in the `reward` config"),
            "reward models ['x'] have no entry in the `reward` config",
        ),  # without str(KeyError)'s quotes
        (ImportError("needs PEFT: pip install peft"), "needs PEFT: pip install peft"),
        (ConfigCompositionException("Could not override 'x'."), "Could not override 'x'."),  # pipeline.*
        (KeyError("helpful"), None),  # a bare key: a lookup bug
        (ImportError("cannot import name 'x' from 'y'"), None),
        (RuntimeError("shape mismatch"), None),
        (TypeError("unsupported operand"), None),
        (AttributeError("'NoneType' object has no attribute 'x'"), None),
        (ConfigKeyError("Key 'x' is not in struct"), None),  # code reading a key that is not there
    ],
)
def test_user_errors_and_bugs(exc: BaseException, message: str | None) -> None:
    assert user_message(exc) == message


def test_missing_value_names_the_key_to_set() -> None:
    cfg = OmegaConf.create({"data": {"path": "???"}, "task": {"path": "${data.path}"}})
    assert user_message(raised(lambda: cfg.data.path)) == (
        "config key data.path has no value; set it on the command line: data.path=…"
    )
    assert user_message(raised(lambda: cfg.task.path)) == (
        "config key data.path has no value (needed by task.path); set it on the command line: data.path=…"
    )


def test_failed_interpolation_names_its_key() -> None:
    cfg = OmegaConf.create({"a": {"b": "${nope}"}})
    assert user_message(raised(lambda: cfg.a.b)) == "a.b: Interpolation key 'nope' not found"


def test_instantiation_error_is_unwrapped_to_its_cause_and_key() -> None:
    bad_value = {"node": {"_target_": "lit_rlhf.rewards.transforms.Whiten", "eps": 0}}
    exc = raised(lambda: instantiate(bad_value))
    assert isinstance(exc, InstantiationException)
    assert user_message(exc) == "transform.eps must be > 0, got 0 (in config node)"
    unknown_key = {"node": {"_target_": "lit_rlhf.rewards.transforms.Whiten", "nope": 1}}
    assert user_message(raised(lambda: instantiate(unknown_key))) == (
        "node: Whiten.__init__() got an unexpected keyword argument 'nope'"
    )
    no_args = {"node": {"_target_": "lit_rlhf.rewards.transforms.LogSigmoid", "nope": 1}}
    assert user_message(raised(lambda: instantiate(no_args))) == "node: LogSigmoid() takes no arguments"
    no_target = {"node": {"_target_": "lit_rlhf.rewards.transforms.Nope"}}
    msg = user_message(raised(lambda: instantiate(no_target)))
    assert (
        msg.startswith("Error locating target 'lit_rlhf.rewards.transforms.Nope'") and "full_key: node" in msg
    )
    no_gpu = {"trainer": {"_target_": "lightning.pytorch.Trainer", "accelerator": "gpu", "logger": False}}
    if not torch.cuda.is_available():  # Lightning's MisconfigurationException: the user's trainer.* choice
        assert (
            user_message(raised(lambda: instantiate(no_gpu)))
            == "No supported gpu backend found! (in config trainer)"
        )
    bug = {"node": {"_target_": "fractions.Fraction", "numerator": 1, "denominator": 0}}
    assert user_message(raised(lambda: instantiate(bug))) is None  # ZeroDivisionError: a bug's traceback


# ------------------------------------------------------------------ the wrapper
def test_user_error_exits_2_with_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as info, exit_on_user_error():
        raise FileNotFoundError("model folder /x does not exist (model.name_or_path)")
    assert info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "lit_rlhf: error: model folder /x does not exist (model.name_or_path)"
    assert "HYDRA_FULL_ERROR=1" in err


def test_bug_and_full_error_keep_the_original(monkeypatch) -> None:
    with pytest.raises(RuntimeError, match="a bug"), exit_on_user_error():
        raise RuntimeError("a bug")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="bad value"), exit_on_user_error():
        raise ValueError("bad value")


def test_ddp_child_names_its_rank(capsys, monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit) as info, exit_on_user_error():
        raise ValueError("bad value")
    assert info.value.code == EXIT_USER_ERROR  # non-zero: Lightning's observer stops the other ranks
    assert capsys.readouterr().err.startswith("lit_rlhf: error (rank 1): bad value\n")


def test_multirun_job_fails_as_a_compact_hydra_error(tmp_path) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with hydra_cfg(tmp_path):
        with read_write(HydraConfig.get()):
            HydraConfig.get().mode = RunMode.MULTIRUN
        with pytest.raises(UserError, match=r"^lit_rlhf: error: bad value$") as info, exit_on_user_error():
            raise ValueError("bad value")
    assert info.value.__cause__ is None and isinstance(info.value.__context__, ValueError)


# ------------------------------------------------------------------ python train.py …
@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny causal LM, a reward model on its tokenizer, 40 good pairs and a prompts file."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("errors")
    policy = make_model_folder("gpt2", tmp / "policy")
    tok = AutoTokenizer.from_pretrained(policy)
    cfg = make_config("gpt2", tok)
    cfg.num_labels, cfg.pad_token_id = 1, tok.eos_token_id
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp / "rm")
    tok.save_pretrained(tmp / "rm")
    pairs = [{"prompt": f"about cats {i}", "chosen": "cats purr", "rejected": "no"} for i in range(40)]
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in pairs))
    return {"root": tmp, "policy": policy, "rm": tmp / "rm"}


def train_py(root: Path, *overrides: str, env: dict | None = None, multirun: bool = False):
    """``python train.py [-m] paths.root_dir=<root> logger=none <overrides>`` → CompletedProcess."""
    cmd = [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else [])]
    return subprocess.run(
        [*cmd, f"paths.root_dir={root}", "logger=none", *overrides],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def rm_job(f: dict[str, Path], data: Path) -> list[str]:
    return ["task=reward_model", "reward=helpful", "model=hf", f"model.name_or_path={f['policy']}",
            "data=jsonl", f"data.path={data}"]  # fmt: skip


def cases(f: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """Two commands that fail before training: overrides → what stderr must contain. Each case of
    docs/failures.md's ``cli_error`` row (one line, exit status 2, no traceback, the other jobs of a sweep
    still run) is tested through train.py by tests/test_failure_table.py."""
    bad, good = BAD / "malformed_json.jsonl", f["root"] / "pairs.jsonl"
    return {
        "malformed_line": (rm_job(f, bad), f"{bad}:2: malformed JSON"),
        "missing_model": ([*rm_job(f, good), "model.name_or_path=/nonexistent"],
                          "model folder /nonexistent does not exist (model.name_or_path)"),
    }  # fmt: skip


@pytest.mark.slow  # train.py in a subprocess
def test_cli_full_error_shows_the_trace(folders, tmp_path) -> None:
    overrides, expected = cases(folders)["missing_model"]
    out = train_py(tmp_path, *overrides, env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0 and TRACEBACK in out.stderr and f"FileNotFoundError: {expected}" in out.stderr


@pytest.mark.slow
def test_cli_ddp_ranks_exit_with_the_message(folders, tmp_path) -> None:
    overrides, expected = cases(folders)["malformed_line"]
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    out = train_py(tmp_path, *overrides, *ddp)
    assert out.returncode == EXIT_USER_ERROR and TRACEBACK not in out.stderr, out.stderr
    assert f"lit_rlhf: error (rank 1): {expected}" in out.stderr  # the child took the same clean exit
