"""run.json / done.json: what a run folder was made with, whether it finished, and the refusal to continue
a folder made with another config, stage or code (with the ways out in the message)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import TINY_STAGES, TINY_WORLD, hydra_cfg
from lit_rlhf.run import record as rr

CODE = {"source": "a" * 64, "version": "0.1.0", "git": "abc1234"}
GIT = "(git abc1234, version 0.1.0)"
SFT = [*TINY_WORLD, *TINY_STAGES, "task=sft"]


def work(run_dir: Path) -> Path:
    """Make ``run_dir`` look like an interrupted run: a ``checkpoints/last.ckpt``."""
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"not read")
    return run_dir


# ------------------------------------------------------------------ pure parts
def test_differences_lists_config_stages_then_code():
    old = {
        "config": {"task": {"iterations": 6, "module": {"lr": 1e-3}}, "seed": 0, "gone": 1},
        "stages": {"sft": "sft-111"},
        "code": CODE,
    }
    new = {
        "config": {"task": {"iterations": 30, "module": {"lr": 1e-3}}, "seed": 0, "added": [1, 2]},
        "stages": {"sft": "sft-222"},
        "code": {**CODE, "source": "b" * 64},
    }
    assert rr.differences(old, new) == [
        "added: (absent) → [1, 2]",
        "gone: 1 → (absent)",
        "task.iterations: 6 → 30",  # task.module: equal key by key
        'stages.sft: "sft-111" → "sft-222"',
        f"code: lit_rlhf source {'a' * 12} {GIT} → {'b' * 12} {GIT}",
    ]


def test_only_the_source_hash_counts_as_code():
    """``git describe`` of two dirty trees can be equal and of one tree can change: not compared."""
    old = {"config": {"a": 1}, "code": CODE}
    assert rr.differences(old, {"config": {"a": 1}, "code": {**CODE, "git": "def5678-dirty"}}) == []


def test_snapshot_ignores_where_files_go(tmp_path):
    """Another root, cache and output folder, progress bar, ckpt_path and resume: the same record."""
    with hydra_cfg(tmp_path / "a", ["ckpt_path=/x.ckpt"]) as cfg:
        a = rr.config_snapshot(cfg)
    with hydra_cfg(tmp_path / "b", ["trainer.enable_progress_bar=false", "resume=force"]) as cfg:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "elsewhere")
        b = rr.config_snapshot(cfg)
    assert a == b
    assert "hydra" not in a and "ckpt_path" not in a and "resume" not in a and a["paths"] == {}
    assert a["data"]["sft_train"] == "${paths.cache_dir}/world-seed0/sft_train.jsonl"
    assert a["trainer"]["default_root_dir"] == "${paths.output_dir}"
    assert a["task"]["iterations"] == 120  # resolved values, as read back from JSON


def test_snapshot_differences_name_the_changed_keys(tmp_path):
    with hydra_cfg(tmp_path, []) as cfg:
        a = {"config": rr.config_snapshot(cfg), "code": CODE}
    with hydra_cfg(tmp_path, ["task.module.lr=1e-3", "+transform=logsigmoid"]) as cfg:
        b = {"config": rr.config_snapshot(cfg), "code": CODE}
    logsigmoid = '{"_target_": "lit_rlhf.rewards.transforms.LogSigmoid"}'
    assert rr.differences(a, b) == [
        f"task.callbacks.reward_transform.transform: null → {logsigmoid}",  # the group, interpolated
        "task.module.lr: 4e-05 → 0.001",
        f"transform: (absent) → {logsigmoid}",
    ]


# ------------------------------------------------------------------ check
def test_a_folder_without_work_is_never_refused(tmp_path):
    with hydra_cfg(tmp_path, SFT) as cfg:
        rr.record(tmp_path / "run", cfg, {**CODE, "source": "old"})  # crashed before its first checkpoint
        assert rr.check(tmp_path / "run", cfg, CODE) == []


def test_same_record_passes_other_config_is_refused_with_the_ways_out(tmp_path):
    run_dir = work(tmp_path / "run")
    with hydra_cfg(tmp_path, SFT) as cfg:
        rr.record(run_dir, cfg, CODE)
        assert rr.check(run_dir, cfg, CODE) == []
    with hydra_cfg(tmp_path, [*SFT, "task.max_epochs=7"]) as cfg:
        with pytest.raises(ValueError) as err:
            rr.check(run_dir, cfg, CODE)
        diff = rr.check(run_dir, cfg, CODE, force=True)
    assert diff == ["task.max_epochs: 3 → 7", "trainer.max_epochs: 3 → 7"]  # the trainer's interpolates it
    text = str(err.value)
    assert str(run_dir) in text and all(f"  {line}" in text for line in diff)
    assert "delete or rename" in text and "resume=force" in text and "hydra.sweep.dir" in text


def test_other_code_or_stages_are_refused(tmp_path):
    run_dir = work(tmp_path / "run")
    with hydra_cfg(tmp_path, SFT) as cfg:
        rr.record(run_dir, cfg, CODE, stages={"sft": "sft-111"})
        with pytest.raises(ValueError, match="code: lit_rlhf source aaaaaaaaaaaa .* → bbbbbbbbbbbb"):
            rr.check(run_dir, cfg, {**CODE, "source": "b" * 64}, stages={"sft": "sft-111"})
        with pytest.raises(ValueError, match='stages.sft: "sft-111" → "sft-222"'):
            rr.check(run_dir, cfg, CODE, stages={"sft": "sft-222"})


def test_only_the_first_differences_are_listed(tmp_path):
    run_dir = work(tmp_path / "run")
    with hydra_cfg(tmp_path, SFT) as cfg:
        rr.record(run_dir, cfg, CODE)
    with hydra_cfg(tmp_path, [*SFT, "seed=3", "task.max_epochs=9", "task.module.lr=0.5"]) as cfg:
        diff = rr.check(run_dir, cfg, {**CODE, "source": "c"}, force=True)
        with pytest.raises(ValueError) as err:
            rr.check(run_dir, cfg, {**CODE, "source": "c"})
    assert diff == [
        "seed: 0 → 3",
        "task.datamodule.seed: 0 → 3",
        "task.max_epochs: 3 → 9",
        "task.module.lr: 0.002 → 0.5",
        "trainer.max_epochs: 3 → 9",
        f"code: lit_rlhf source {'a' * 12} {GIT} → c {GIT}",
    ]
    listed = [line for line in str(err.value).splitlines() if line.startswith("  ")]
    assert listed == [f"  {line}" for line in diff[:5]] + [
        "  … and 1 more (compare " + f"{run_dir}/run.json)"
    ]


def test_work_without_a_record_is_refused(tmp_path):
    """A last.ckpt from before run records (or copied by hand): what made it is unknown."""
    run_dir = work(tmp_path / "run")
    with hydra_cfg(tmp_path, SFT) as cfg:
        with pytest.raises(ValueError, match="run.json: absent"):
            rr.check(run_dir, cfg, CODE)
        assert len(rr.check(run_dir, cfg, CODE, force=True)) == 1


# ------------------------------------------------------------------ finished
def test_finished_reads_done_json(tmp_path):
    assert rr.finished(tmp_path) is None
    rr.mark_done(tmp_path, "val/loss", 1.5)
    assert rr.finished(tmp_path) == rr.Finished("val/loss", 1.5)
    rr.mark_done(tmp_path, None, None)  # no optimized_metric: still finished
    assert rr.finished(tmp_path) == rr.Finished(None, None)
    assert [p.name for p in tmp_path.iterdir()] == ["done.json"]  # no temporary file left
    (tmp_path / "done.json").write_text("[1]")
    with pytest.raises(ValueError, match="done.json does not hold a JSON object"):
        rr.finished(tmp_path)


# ------------------------------------------------------------------ begin / end of a run
def test_begin_records_then_skips_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    with hydra_cfg(tmp_path, SFT) as cfg:
        assert rr.begin_run(cfg) is None  # fresh: recorded
        first = json.loads((run_dir / "run.json").read_text())
        assert first["code"] == rr.code_version() and first["stages"] == {}
        assert first["config"]["task"]["name"] == "sft"
        rr.end_run(cfg, 2.25)
        assert rr.begin_run(cfg) == rr.Finished("val/loss", 2.25)
        assert json.loads((run_dir / "run.json").read_text()) == first  # kept as made
    with hydra_cfg(tmp_path, [*SFT, "seed=5"]) as cfg:
        with pytest.raises(ValueError, match=r"seed: 0 → 5"):
            rr.begin_run(cfg)  # a finished run is not reused for another config either
        with open_dict(cfg):
            cfg.resume = "force"
        assert rr.begin_run(cfg) == rr.Finished("val/loss", 2.25)
        forced = json.loads((run_dir / "run.json").read_text())
        assert forced["config"]["seed"] == 5 and "seed: 0 → 5" in forced["forced"]
        cfg.resume = "auto"
        assert rr.begin_run(cfg) == rr.Finished("val/loss", 2.25)  # the folder is now this config's
        cfg.resume = "sometimes"
        with pytest.raises(ValueError, match=r"resume must be one of \('auto', 'force'\), got 'sometimes'"):
            rr.begin_run(cfg)


def test_a_run_that_died_before_its_first_checkpoint_starts_afresh(tmp_path):
    with hydra_cfg(tmp_path, SFT) as cfg:
        rr.record(tmp_path / "run", cfg, {**CODE, "source": "old"}, stages={"sft": "sft-111"})
        assert rr.begin_run(cfg) is None
    now = json.loads((tmp_path / "run" / "run.json").read_text())
    assert now["code"] == rr.code_version() and now["stages"] == {}  # recorded again, as this run


def test_run_returns_a_finished_result_without_training(tmp_path, monkeypatch):
    import lit_rlhf.run.pipeline as pipeline

    def no_training(cfg):
        raise AssertionError("a finished run was trained again")

    with hydra_cfg(tmp_path, SFT) as cfg:
        rr.begin_run(cfg)
        rr.end_run(cfg, 3.5)
        monkeypatch.setattr(pipeline, "run_sft", no_training)
        assert pipeline.run(cfg) == 3.5


# ------------------------------------------------------------------ stages
@pytest.mark.slow
def test_stage_folders_are_those_ensure_stage_builds(tmp_path, stage_cache):
    from lit_rlhf.run.pipeline import ensure_stage

    with hydra_cfg(tmp_path, [*TINY_WORLD, *TINY_STAGES], cache=stage_cache) as cfg:
        built = {
            "sft": ensure_stage(cfg, "sft").parent.name,
            "reward_model-helpful": ensure_stage(cfg, "reward_model", ["reward=helpful"]).parent.name,
            "reward_model-harmless": ensure_stage(cfg, "reward_model", ["reward=harmless"]).parent.name,
        }
        assert rr.stage_folders(cfg) == built
    with hydra_cfg(
        tmp_path, [*TINY_WORLD, *TINY_STAGES, "task=reward_model", "reward=helpful"], cache=stage_cache
    ) as cfg:
        assert rr.stage_folders(cfg) == {"sft": built["sft"]}  # task.init_from=auto: the SFT stage
    given = [*TINY_WORLD, *TINY_STAGES, "task.policy_path=/my/sft", "reward.helpful.path=/my/rm"]
    with hydra_cfg(tmp_path, given, cache=stage_cache) as cfg:
        # the harmless reward model still starts from the SFT stage (its folder enters the RM's hash)
        assert rr.stage_folders(cfg) == {k: built[k] for k in ("reward_model-harmless", "sft")}
    all_given = [*given, "reward=helpful"]
    with hydra_cfg(tmp_path, all_given, cache=stage_cache) as cfg:
        assert rr.stage_folders(cfg) == {}
    other = [*TINY_WORLD, *TINY_STAGES, 'pipeline.sft=["task.max_epochs=2"]']
    with hydra_cfg(tmp_path, other, cache=stage_cache) as cfg:
        moved = rr.stage_folders(cfg)
    # another SFT stage, and the reward models that start from it: named, not built
    assert all(moved[k] != built[k] for k in built)
    assert not any((stage_cache / "stages" / name).exists() for name in moved.values())
    # every policy task records the same stages as PPO (GRPO/RLOO/REINFORCE++ runs recorded none before)
    for task in ("grpo", "rloo", "reinforce_pp"):
        with hydra_cfg(tmp_path, [*TINY_WORLD, *TINY_STAGES, f"task={task}"], cache=stage_cache) as cfg:
            assert rr.stage_folders(cfg) == built, task
    # an ensemble: one stage per member seed, seed 0 the property's usual reward model; named, not built
    ens = [*TINY_WORLD, *TINY_STAGES, "reward=helpful_ensemble"]
    with hydra_cfg(tmp_path, ens, cache=stage_cache) as cfg:
        members = rr.stage_folders(cfg)
    assert set(members) == {"sft", *(f"reward_model-helpful[seed={s}]" for s in (0, 1, 2))}
    assert members["reward_model-helpful[seed=0]"] == built["reward_model-helpful"]
    assert len({members[f"reward_model-helpful[seed={s}]"] for s in (0, 1, 2)}) == 3
