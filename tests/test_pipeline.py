"""The command line and the wiring: configs compose and instantiate, SFT learns and saves a loadable
folder, your own JSONL + local HF model path works, and the default command runs end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

from conftest import CONF, ROOT, TINY_STAGES, TINY_WORLD, hydra_cfg
from lit_rlhf.run.pipeline import run
from lit_rlhf.world import build_tokenizer, vocabulary


def cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIT_RLHF_ROOT": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow  # train.py in a subprocess
def test_cfg_job_prints_composed_config(tmp_path):
    out = cli("--cfg", "job", "+transform=logsigmoid", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.transform._target_ == "lit_rlhf.rewards.transforms.LogSigmoid"
    assert cfg.task.name == "ppo" and set(cfg.reward) == {"helpful", "harmless"}


@pytest.mark.slow  # train.py in a subprocess
def test_unknown_group_option_lists_valid_ones(tmp_path):
    out = cli("--cfg", "job", "+transform=logsigmod", cwd=tmp_path)
    assert out.returncode != 0
    assert "logsigmod" in out.stderr and "logsigmoid" in out.stderr and "Available options" in out.stderr


@pytest.mark.parametrize(
    "group", ["transform", "aggregator", "optimizer", "model", "logger", "callbacks", "reward"]
)
def test_every_shipped_option_composes_and_instantiates(tmp_path, group):
    for yaml in sorted((CONF / group).glob("*.yaml")):
        option = yaml.stem
        prefix = "+" if group == "transform" else ""
        extra = ["model.name_or_path=/nowhere"] if (group, option) == ("model", "hf") else []
        with hydra_cfg(tmp_path, [f"{prefix}{group}={option}", *extra]) as cfg:
            node = cfg[group]
            if "_target_" in node:
                obj = instantiate(node)
                if group == "optimizer":
                    if "8bit" in option:
                        pytest.importorskip("bitsandbytes")
                    obj([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
                assert obj is not None
            else:  # dict of instantiables (logger/callbacks) or reward specs
                for value in node.values():
                    if "_target_" in value:
                        assert instantiate(value) is not None


@pytest.mark.slow  # trains through the pipeline
def test_sft_learns_and_saves_loadable_policy(tmp_path):
    with hydra_cfg(
        tmp_path, [*TINY_WORLD, *TINY_STAGES, "task=sft", "task.max_epochs=3", "task.module.warmup_steps=10"]
    ) as cfg:
        val_loss = run(cfg)
        vocab = len(vocabulary()) + 3
    # a randomly initialised model starts at ≈ log(vocab); the demonstrations' own entropy is ~3.5 nats
    assert val_loss < math.log(vocab) - 0.7, (
        f"held-out loss {val_loss:.2f} vs initial ≈ {math.log(vocab):.2f}"
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=True)
    assert out.shape == (1, 7)


def tiny_hf_model(folder: Path) -> Path:
    """A user's local HF folder: a GPT-2 and its tokenizer written with save_pretrained."""
    tok = build_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    cfg.pad_token_id, cfg.eos_token_id = tok.pad_token_id, tok.eos_token_id
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def hh_line(prompt: str, chosen: str, rejected: str) -> str:
    return json.dumps(
        {
            "chosen": f"\n\nHuman: {prompt}\n\nAssistant: {chosen}",
            "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {rejected}",
        }
    )


@pytest.mark.slow  # trains through the pipeline
def test_user_jsonl_and_local_hf_model(tmp_path):
    """`data=jsonl` (HH format, then prompts-only) with `model=hf`: reward model, then PPO on it."""
    words = vocabulary()[10:60]
    base = tiny_hf_model(tmp_path / "base")
    g = torch.Generator().manual_seed(0)
    lines, prompts = [], []
    for i in range(200):
        w = [words[j] for j in torch.randint(len(words), (6,), generator=g).tolist()]
        prompt = " ".join(w[:2])
        lines.append(hh_line(prompt, " ".join(w[2:5]), " ".join(w[3:4])))
        prompts.append(json.dumps({"prompt": prompt, "id": i}))
    (tmp_path / "hh.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    common = ["model=hf", f"model.name_or_path={base}", "logger=none", "trainer.enable_progress_bar=false"]
    with hydra_cfg(
        tmp_path / "rm",
        ["task=reward_model", "reward=helpful", "data=jsonl", f"data.path={tmp_path}/hh.jsonl", *common],
    ) as cfg:
        acc = run(cfg)
    assert acc is not None and 0.0 <= acc <= 1.0
    rm_dir = tmp_path / "rm" / "run" / "model"
    assert AutoModelForSequenceClassification.from_pretrained(rm_dir).config.num_labels == 1
    bad_init = ["task=reward_model", "reward=helpful", "data=jsonl", f"data.path={tmp_path}/hh.jsonl"]
    with (
        hydra_cfg(tmp_path / "rm2", [*bad_init, *common, "task.init_from=/no/such/dir"]) as cfg,
        pytest.raises(FileNotFoundError, match="task.init_from=/no/such/dir"),
    ):
        run(cfg)
    ppo = [
        "data=jsonl",
        f"data.path={tmp_path}/prompts.jsonl",
        f"task.policy_path={base}",
        "reward=helpful",
        f"reward.helpful.path={rm_dir}",
        "+transform=logsigmoid",
        "task.iterations=2",
        "task.val_check_interval=2",
        "task.datamodule.batch_size=8",
        "task.module.eval_samples_per_prompt=1",
        "task.callbacks.reward_transform.n_samples=2",
        "task.optimized_metric=ppo/kl",
        *common,
    ]
    with hydra_cfg(tmp_path / "ppo", ppo) as cfg:
        run(cfg)
    assert (tmp_path / "ppo" / "run" / "model" / "config.json").is_file()
    stages = json.loads((tmp_path / "ppo" / "run" / "stages.json").read_text())
    assert stages == {"policy": str(base), "reward_models": {"helpful": str(rm_dir)}}


@pytest.mark.slow  # trains through the pipeline
def test_missing_reward_model_folder_is_a_clear_error(tmp_path):
    with (
        hydra_cfg(
            tmp_path,
            [
                *TINY_WORLD,
                "reward=helpful",
                "reward.helpful.path=/no/such/rm",
                "task.policy_path=/no/such/sft",
            ],
        ) as cfg,
        pytest.raises(FileNotFoundError, match="/no/such/sft"),
    ):
        run(cfg)


@pytest.mark.slow
def test_default_command_end_to_end_and_multirun(tmp_path):
    """`python train.py +transform=logsigmoid debug=fast`, then a 4-job multirun sharing the cached stages."""
    out = cli("+transform=logsigmoid", "debug=fast", "hydra.run.dir=run", cwd=tmp_path, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert list((tmp_path / "run" / "tensorboard").glob("events.*"))
    stages = sorted(p.name for p in (tmp_path / ".cache" / "lit_rlhf" / "stages").iterdir() if p.is_dir())
    assert len(stages) == 3, stages  # sft + two reward models

    out = cli(
        "-m",
        "+transform=identity,logsigmoid",
        "seed=0,1",
        "debug=fast",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert len(jobs) == 4
    for job in jobs:
        assert list((job / "tensorboard").glob("events.*")), f"{job} has no TensorBoard events"
    again = sorted(p.name for p in (tmp_path / ".cache" / "lit_rlhf" / "stages").iterdir() if p.is_dir())
    assert again == stages  # every job reused the cached SFT policy and reward models


def test_run_folder_names_are_safe_and_stable():
    from lit_rlhf.run.resolvers import run_name

    assert run_name("") == "default"
    assert run_name("+transform=logsigmoid,seed=1") == "+transform=logsigmoid,seed=1"
    long = ",".join(f"task.module.x{i}=/some/path/{i}" for i in range(40))
    name = run_name(long)
    assert "/" not in name and len(name) <= 100
    assert name == run_name(long) and name != run_name(long + ",seed=2")


@pytest.mark.slow
def test_reward_model_stage_starts_from_its_sft_stage(tmp_path, stage_cache):
    """The embedded reward models start from the SFT policy: another SFT stage gives another RM stage."""
    from lit_rlhf.run.pipeline import ensure_stage

    with hydra_cfg(tmp_path / "a", [*TINY_WORLD, *TINY_STAGES], cache=stage_cache) as cfg:
        sft, rm = ensure_stage(cfg, "sft"), ensure_stage(cfg, "reward_model", ["reward=helpful"])
    other_sft = [*TINY_STAGES, 'pipeline.sft=["task.max_epochs=1","task.module.warmup_steps=3"]']
    with hydra_cfg(tmp_path / "b", [*TINY_WORLD, *other_sft], cache=stage_cache) as cfg:
        sft2, rm2 = ensure_stage(cfg, "sft"), ensure_stage(cfg, "reward_model", ["reward=helpful"])
    assert sft2 != sft and rm2 != rm  # the RM stage hash carries its SFT folder
    # the RM's backbone shapes are the SFT policy's (the tiny model overrides reached both)
    policy = AutoModelForCausalLM.from_pretrained(sft2)
    reward = AutoModelForSequenceClassification.from_pretrained(rm2)
    assert reward.config.n_embd == policy.config.n_embd == 32
