"""Every case of the failure table (docs/failures.md), through the real command line: ``python train.py …``.

:data:`ROWS` names the table's rows in order (:func:`test_cases_mirror_the_readme_table` checks them
against docs/failures.md one to one) and :data:`CASES` has every case of every row, test ids ``<row>-<case>``:
those of the bad-input rows (``data_line`` … ``sampling``) are in ``failure_table_inputs.py``, those of
the rows about runs (``ckpt_cadence`` … ``bad_cache``) in ``failure_table_training.py``.
Each asserts no traceback in stdout + stderr, the exit status (2 for a user error, 0 where the case is
handled and training goes on; 1 for a ``-m`` sweep with a failed job, as Hydra ends it), the message
(file:line:field or the config key) and, where files exist, that they are unchanged. Of the ``cli_error``
row's six, three are cases of their own rows: ``data_line-malformed_json``, ``bad_ckpt-missing`` and
``unknown_option-transform``.

The runs are tiny (random 2-layer GPT-2 / Llama folders, 40-line JSONL files, 2–6 PPO iterations), so
each costs about the start-up of an interpreter importing torch, Lightning and transformers (~7 s on an
idle core): the parametrised test is ``slow``. Faults inside a run — a crash, ``kill -9`` mid-iteration
or half-way through writing a checkpoint — come from a Lightning callback given on the command line and
armed by an environment variable, so the re-run is the same command; NaN, constant and huge rewards come
from reward-model folders whose weights were edited on disk (``tests/train_cli.py``).

What no command line can show, and where it is tested instead:

* ``sampling``: that rollouts follow softmax(logits / T) although a folder's ``generation_config.json``
  ships a repetition penalty, an n-gram ban, top-k and min-p is a property of the sampled distribution,
  not of a message or file a run leaves (``test_real_models.py``); here such a folder trains cleanly and
  ``task.module.top_k`` / ``top_p`` are refused.
* ``long_prompt``: which tokens truncation keeps is internal to the datamodule (``test_datamodules.py``);
  here a run on prompts longer than the context trains and says so, naming
  ``task.datamodule.max_prompt_tokens``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import failure_table_inputs
import failure_table_training
import pytest
import torch
from hydra.errors import ConfigCompositionException
from train_cli import ROOT, Case, Evil, World

from lit_rlhf.run.errors import UserError, config_errors_exit_2

# the failure table's rows (docs/failures.md), in order: id → how its first cell begins
ROWS = {
    "data_line": "malformed JSON, line not an object",
    "data_file": "empty file, blank-lines-only file",
    "long_prompt": "prompt longer than the context",
    "unknown_option": "unknown group option",
    "cli_error": "any user-input error on the command line",
    "conversation": "conversational data:",
    "hint": "every hint's suggested override",
    "sampling": "a checkpoint's `generation_config.json`",
    "ckpt_cadence": "a skipped update (ratio explosion) with periodic checkpoints",
    "other_record": "re-run of a run folder whose `run.json` records another config",
    "finished": "the same command after the run finished",
    "sweep_kill": "`kill -9` during job 2 of a 4-job `-m` sweep",
    "one_sample": "`task=grpo` / `rloo` with `samples_per_prompt=1`",
    "missing_folder": "policy or reward-model folder missing",
    "nan_batch": "NaN/inf from a reward model",
    "nan_streak": "NaN/inf in K = 3 consecutive batches",
    "ratio": "ratio explosion (max π/π_old",
    "extreme_reward": "all-identical rewards in whitening",
    "crash": "crash mid-training, same command re-run",
    "kill": "`kill -9` mid-training, same command re-run",
    "kill_in_save": "kill during a checkpoint save",
    "bad_ckpt": "`ckpt_path` missing; checkpoint of another task",
    "bad_cache": "corrupt r_ref cache; a cache holding pickled code",
}


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> World:
    torch.set_num_threads(1)
    return World(tmp_path_factory.mktemp("failure_table"))


CASES: list[Case] = [*failure_table_inputs.CASES, *failure_table_training.CASES]  # in the table's order


# ------------------------------------------------------------------ the tests
def test_cases_mirror_the_readme_table() -> None:
    """ROWS lists the failure table's rows (docs/failures.md) in order, and every row has cases here."""
    section = (ROOT / "docs" / "failures.md").read_text().split("# Failure handling")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]  # after the header and rule
    first_cells = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert len(first_cells) == len(ROWS)
    for cell, (row, start) in zip(first_cells, ROWS.items()):
        assert cell.startswith(start), f"row {row}: {cell!r}"
    assert [r for r in ROWS if not any(c.row == r for c in CASES)] == []
    assert all(c.row in ROWS for c in CASES)


def test_refused_checkpoint_is_a_user_error_only_where_lightning_loads_one(tmp_path: Path) -> None:
    """The classification behind ``bad_ckpt-pickled_code``, without a subprocess."""
    import pickle  # noqa: PLC0415

    from lightning.pytorch.strategies import SingleDeviceStrategy  # noqa: PLC0415

    from lit_rlhf.run.errors import user_message  # noqa: PLC0415

    torch.save({"x": Evil(tmp_path / "ran")}, ckpt := tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError) as info:
        SingleDeviceStrategy("cpu").load_checkpoint(ckpt, weights_only=True)  # what Trainer.fit calls
    message = user_message(info.value)
    assert message.startswith(f"cannot resume from {ckpt}: torch.load(weights_only=True) refuses it (")
    assert "GLOBAL exec" in message and "Check ckpt_path" in message and not (tmp_path / "ran").exists()
    with pytest.raises(pickle.UnpicklingError) as info:
        torch.load(ckpt, weights_only=True)  # not a checkpoint to resume from: a bug's traceback
    assert user_message(info.value) is None


@pytest.mark.parametrize(
    ("error", "status"),
    [(ConfigCompositionException("Could not find 'transform/x'"), 2), (UserError("a sweep job"), 1),
     (RuntimeError("a bug"), 1), (None, 1)],
)  # fmt: skip
def test_config_errors_exit_2(error: Exception | None, status: int) -> None:
    """Hydra reports a composition error, then exits 1 inside its ``except``: only that becomes 2."""

    def hydra_main() -> None:
        try:
            if error is not None:
                raise error
            sys.exit(1)
        except Exception:
            sys.exit(1)

    with pytest.raises(SystemExit) as info, config_errors_exit_2():
        hydra_main()
    assert info.value.code == status


@pytest.mark.slow  # ~70 runs of train.py: one interpreter start-up (torch, Lightning, transformers) each
@pytest.mark.parametrize("c", CASES, ids=[f"{c.row}-{c.name}" for c in CASES])
def test_failure_case_through_train_py(w: World, tmp_path: Path, c: Case) -> None:
    c.check(w, tmp_path, *c.args)
