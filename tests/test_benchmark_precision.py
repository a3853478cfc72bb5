"""The benchmark's ``--precision`` choice reaches both sides alike: fp32 keeps TRL off its bf16 default,
bf16 turns on lit_rlhf's ``bf16-mixed`` and TRL's ``bf16=True`` together, and the report is named by it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import run  # noqa: E402
from common import SIZES, Settings, lit_precision, runs_dir, trl_precision  # noqa: E402


def test_each_precision_maps_to_both_sides_switches():
    fp32, bf16 = SIZES["toy"], Settings(precision="bf16")
    assert (lit_precision(fp32), trl_precision(fp32)) == ("32-true", {"bf16": False, "fp16": False})
    assert (lit_precision(bf16), trl_precision(bf16)) == ("bf16-mixed", {"bf16": True, "fp16": False})


def test_a_side_reads_the_precision_from_its_arguments(tmp_path, monkeypatch):
    import common  # noqa: PLC0415

    monkeypatch.setattr(common, "HERE", tmp_path)
    (tmp_path / "runs" / "toy").mkdir(parents=True)
    assert runs_dir("toy") == tmp_path / "runs" / "toy"
    SIZES["toy"].dump()
    task, s = Settings.from_argv(["grpo", "toy", "bf16"])
    assert (task, s.precision, s.group_size) == ("grpo", "bf16", SIZES["toy"].group_size)
    assert Settings.from_argv(["rm", "toy"])[1].precision == "fp32"  # the settings file's default
    with pytest.raises(SystemExit, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        Settings.from_argv(["rm", "toy", "fp16"])


@pytest.mark.parametrize(
    ("size", "precision", "name"),
    [("toy", "fp32", "results.md"), ("smollm2", "fp32", "results-smollm2.md")]
    + [("toy", "bf16", "results-bf16.md"), ("smollm2", "bf16", "results-smollm2-bf16.md")],
)
def test_report_file_is_named_by_size_and_precision(size, precision, name):
    assert run.results_name(size, precision) == name


@pytest.mark.slow  # a fresh interpreter
def test_peak_is_measured_in_the_precision_s_dtype():
    snippet = run.PEAK_SNIPPET.format(threads=1, dtype="bfloat16").replace("n = 4096", "n = 64")
    assert "dtype=torch.bfloat16" in snippet
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, check=True)
    assert float(out.stdout) > 0


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.skipif(not run.peer_python("grpo").exists(), reason="benchmarks/setup_peers.sh not run")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trl_takes_the_precision_as_planned(tmp_path, precision):
    snippet = (
        "import json, sys, trl\n"
        "kw = json.loads(sys.argv[2])\n"
        "c = trl.GRPOConfig(output_dir=sys.argv[1], use_cpu=True, report_to='none', **kw)\n"
        "print(json.dumps([c.bf16, c.fp16]))\n"
    )
    kw = json.dumps(trl_precision(Settings(precision=precision)))
    p = subprocess.run(
        [str(run.peer_python("grpo")), "-c", snippet, str(tmp_path), kw], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [precision == "bf16", False]


def test_lit_side_optimizer_is_the_shipped_fused_adamw():
    import torch  # noqa: PLC0415
    from lit_side import optimizer  # noqa: PLC0415

    p = torch.nn.Parameter(torch.ones(3))
    opt = optimizer(SIZES["toy"])([p], lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert (opt.defaults["fused"], opt.defaults["betas"], opt.defaults["weight_decay"]) == (
        True,
        (0.9, 0.95),
        0.0,
    )


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.skipif(not run.peer_python("rm").exists(), reason="benchmarks/setup_peers.sh not run")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trl_reward_config_does_lit_rlhf_s_work(tmp_path, precision):
    # RewardConfig defaults to gradient checkpointing (a second forward per backward) and to bf16
    snippet = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "from common import Settings\n"
        "from trl import RewardConfig\n"
        "from trl_side import common_args\n"
        "c = RewardConfig(**common_args(Settings(precision=sys.argv[2]), sys.argv[1]))\n"
        "print(json.dumps([c.gradient_checkpointing, c.bf16, c.optim]))\n"
    )
    p = subprocess.run(
        [str(run.peer_python("rm")), "-c", snippet, str(tmp_path), precision], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [False, precision == "bf16", "adamw_torch"]


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.skipif(not run.peer_python("grpo").exists(), reason="benchmarks/setup_peers.sh not run")
def test_trl_group_configs_build_with_the_common_arguments(tmp_path):
    # the exact keywords trl_group.py passes: a key in both would be a TypeError at run time
    snippet = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "from common import Settings\n"
        "from group import trl_group_config\n"
        "from trl import GRPOConfig, RLOOConfig\n"
        "from trl_side import common_args\n"
        "s = Settings()\n"
        "out = [C(**common_args(s, sys.argv[1]), **trl_group_config(s, t)).gradient_checkpointing\n"
        "       for C, t in ((GRPOConfig, 'grpo'), (RLOOConfig, 'rloo'))]\n"
        "print(json.dumps(out))\n"
    )
    p = subprocess.run(
        [str(run.peer_python("grpo")), "-c", snippet, str(tmp_path)], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [False, False]


@pytest.mark.slow  # a fresh interpreter
def test_peer_cpu_tuning_gives_the_peer_the_values_lit_rlhf_sets(tmp_path):
    """``--peer-cpu-tuning`` hands TRL the same glibc thresholds lit_rlhf's callback passes to mallopt, and
    eager attention only under bf16 (in fp32 neither side switches)."""
    from lit_rlhf.callbacks import cpu_tuning  # noqa: PLC0415

    keep = str(cpu_tuning._KEEP_BYTES)
    bf16, fp32 = run.peer_cpu_tuning_env("bf16"), run.peer_cpu_tuning_env("fp32")
    assert bf16 == {
        "MALLOC_MMAP_THRESHOLD_": keep,
        "MALLOC_TRIM_THRESHOLD_": keep,
        "LIT_BENCH_PEER_ATTN": "eager",
    }
    assert fp32 == {"MALLOC_MMAP_THRESHOLD_": keep, "MALLOC_TRIM_THRESHOLD_": keep}
    assert cpu_tuning.attention_for("cpu", "32-true", "sdpa", "eager") is None
    # glibc reads the two variables at start-up: a freed 256 MiB block stays mapped, as under mallopt
    script = (
        "import torch\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
        "b = rss(); x = torch.ones(256, 2**18); del x; print(round(rss() - b))\n"
    )
    if sys.platform.startswith("linux"):
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env={**run.ENV, **fp32}
        )
        assert int(out.stdout) >= 250, out.stderr
