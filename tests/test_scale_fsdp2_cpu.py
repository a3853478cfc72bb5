"""Sharded policy training on CPU: FSDP2 (``trainer=model_parallel``, 2 gloo processes) computes what one
process holding the global batch computes, for PPO and GRPO — the same rollouts, losses, evaluation samples
and final weights up to rounding, as the DDP test checks (``test_scale_ddp_cpu.py``). Every model of the
run is sharded (policy, reference, critic, reward models), so each of their forwards is collective: the
rollouts (``synced_gpus``), the minibatches' stand-in rows, r_ref sampled by every rank in step, and the
cache key hashed from the whole weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_scale_ddp_cpu
from test_scale_ddp_cpu import PPO_RUN, assert_same_run, one_and_ddp

world = test_scale_ddp_cpu.world  # the tiny world, generated once for this module too (a fixture)

FSDP2_CPU = [
    "trainer=model_parallel",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
]


@pytest.mark.slow  # ~60 s each: both runs at once (3 processes on 2 cores)
@pytest.mark.parametrize(
    ("task", "extra", "batches", "min_kl"),
    [
        ("ppo", [], (16, 8), 0.05),
        # 8 minibatches of 2 rows: most leave a rank without rows (it runs a stand-in row, counted as none)
        ("grpo", ["task.module.samples_per_prompt=2", "task.module.num_minibatches=8"], (8, 4), 0.005),
    ],
)
def test_fsdp2_on_cpu_matches_one_process_with_the_same_global_batch(
    tmp_path: Path, world: Path, task: str, extra: list[str], batches: tuple[int, int], min_kl: float
) -> None:
    overrides = [*PPO_RUN, f"task={task}", *extra]
    one_and_ddp(tmp_path, world, overrides, batches=batches, multi=FSDP2_CPU)
    assert_same_run(tmp_path, task, min_kl=min_kl)
    # the r_ref the sharded run sampled (every rank in step) is the one-process run's: the same cache key
    # (hashed from the whole weights) and the same samples, their scores up to rounding (the shared-prefix
    # forward packs a rank's groups into rows of other lengths than one process holding them all does)
    (one,) = (tmp_path / "one" / "cache").rglob("samples-*.pt")
    (two,) = (tmp_path / "ddp" / "cache").rglob("samples-*.pt")
    assert one.name == two.name
    assert one.read_bytes() == two.read_bytes() or _same_tensors(one, two)


def _same_tensors(a: Path, b: Path) -> bool:
    """Equal keys, equal non-float tensors, float tensors equal up to fp32 rounding."""
    import torch

    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert x.keys() == y.keys()
    for k in x:
        if x[k].is_floating_point():
            torch.testing.assert_close(x[k], y[k], rtol=1e-5, atol=1e-5, msg=f"r_ref samples: {k}")
        else:
            assert torch.equal(x[k], y[k]), k
    return True


@pytest.mark.slow  # ~30 s each
@pytest.mark.parametrize("task", ["sft", "reward_model", "rloo", "reinforce_pp"])
def test_other_tasks_train_under_fsdp2_on_cpu(tmp_path: Path, world: Path, task: str) -> None:
    """The tasks the comparisons above do not cover run sharded: they train (the saved weights moved from
    the start) and rank 0 saves one whole model that transformers loads."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from test_scale_ddp_cpu import RM_RUN, TINY_MODEL, TINY_WORLD, train_py, wait

    cache = tmp_path / "cache"
    shutil.copytree(world, cache)
    short = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "task.max_epochs=1"]
    runs = {
        "sft": [*TINY_WORLD, *TINY_MODEL, "task=sft", "callbacks=none", *short],
        "reward_model": [*RM_RUN, *short],
        "rloo": [*PPO_RUN, "task=rloo", "task.iterations=3", "task.val_check_interval=3"],
        "reinforce_pp": [*PPO_RUN, "task=reinforce_pp", "task.iterations=3", "task.val_check_interval=3"],
    }
    extra = ["task.datamodule.batch_size=4", "task.module.samples_per_prompt=2"] if task == "rloo" else []
    proc = train_py(tmp_path, cache, *runs[task], *extra, *FSDP2_CPU, f"hydra.run.dir={tmp_path}/run")
    wait(proc, tmp_path, timeout=600)
    model = tmp_path / "run" / "model"
    weights = load_file(model / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert (tmp_path / "run" / "train_ddp_process_1.log").is_file()  # rank 1 took part
    if task in ("rloo", "reinforce_pp"):  # the policy moved away from the SFT stage it started from
        (sft,) = (cache / "stages").glob("sft-*/model/model.safetensors")
        start = load_file(sft)
        assert any(not torch.equal(start[k], weights[k]) for k in start if k in weights)


@pytest.mark.slow  # ~90 s: three sharded runs
def test_a_sharded_run_resumes_where_it_stopped(tmp_path: Path, world: Path) -> None:
    """GRPO under FSDP2: 2 iterations, then 2 more from its last.ckpt (the frozen models are left out of the
    checkpoint and the weights load before ``on_load_checkpoint``), ends where 4 uninterrupted iterations
    end — the same final policy — and keeps its iteration count."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from test_scale_ddp_cpu import train_py, wait

    cache = tmp_path / "cache"
    shutil.copytree(world, cache)
    grpo = [*PPO_RUN, "task=grpo", "task.module.samples_per_prompt=2", "task.datamodule.batch_size=4"]
    grpo += ["task.module.ppo_epochs=1", "task.module.num_minibatches=2", "task.iterations=4"]
    grpo += ["task.checkpoint_every_n_steps=2", "task.val_check_interval=2", *FSDP2_CPU]
    for name, extra in (
        ("straight", []),
        ("first", ["trainer.max_steps=4"]),  # stops after 2 of the 4 iterations (2 updates each)
        ("resumed", [f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt"]),
    ):
        (tmp_path / name).mkdir()
        proc = train_py(tmp_path / name, cache, *grpo, *extra, f"hydra.run.dir={tmp_path}/{name}")
        wait(proc, tmp_path / name, timeout=600)
    straight, resumed = (
        load_file(tmp_path / n / "model" / "model.safetensors") for n in ("straight", "resumed")
    )
    first = load_file(tmp_path / "first" / "model" / "model.safetensors")
    assert any(not torch.equal(first[k], resumed[k]) for k in first)  # it trained on
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-4, atol=1e-5, msg=k)
