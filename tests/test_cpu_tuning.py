"""``callbacks.cpu_tuning``: glibc keeps freed memory mapped, and bf16 CPU runs switch SDPA to eager attention
(unless the config set the model's attention), with log-probs that still respect left padding."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch
from tiny_hf import make_config, make_tokenizer
from transformers import AutoModelForCausalLM

from lit_rlhf.callbacks.cpu_tuning import CPUTuning, attention_for
from lit_rlhf.models.factory import Pretrained, pin_attention
from lit_rlhf.models.heads import ValueModel
from lit_rlhf.rollout.rollout import token_logprobs


@pytest.mark.parametrize(
    ("device", "precision", "current", "wanted", "expected"),
    [
        ("cpu", "bf16-mixed", "sdpa", "eager", "eager"),
        ("cpu", "bf16-true", "sdpa", "eager", "eager"),
        ("cpu", "32-true", "sdpa", "eager", None),  # fp32: SDPA is the faster kernel
        ("cpu", "16-mixed", "sdpa", "eager", None),
        ("cuda", "bf16-mixed", "sdpa", "eager", None),  # GPUs keep their kernels
        ("cpu", "bf16-mixed", "flash_attention_2", "eager", None),  # only SDPA is replaced
        ("cpu", "bf16-mixed", "eager", "eager", None),
        ("cpu", "bf16-mixed", "sdpa", None, None),  # bf16_attention=null
    ],
)
def test_attention_for_switches_only_sdpa_under_bf16_on_cpu(device, precision, current, wanted, expected):
    assert attention_for(device, precision, current, wanted) == expected


def test_an_unknown_attention_name_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"callbacks\.cpu_tuning\.bf16_attention='eagr'.*'eager'"):
        CPUTuning(bf16_attention="eagr")


class Holder(L.LightningModule):
    def __init__(self, **models) -> None:
        super().__init__()
        for name, m in models.items():
            setattr(self, name, m)


def llama(seed: int = 0):
    torch.manual_seed(seed)
    tok = make_tokenizer("llama")
    return AutoModelForCausalLM.from_config(make_config("llama", tok), attn_implementation="sdpa"), tok


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_callback_switches_every_unpinned_model_and_keeps_pinned_ones(precision: str) -> None:
    free, _ = llama()
    pinned = pin_attention(llama()[0])
    value = ValueModel(llama()[0].model)  # a value head's backbone is found inside its wrapper
    pinned_value = pin_attention(ValueModel(llama()[0].model))
    module = Holder(free=free, pinned=pinned, value=value, pinned_value=pinned_value)
    cb = CPUTuning(keep_freed_memory=False)
    cb.setup(L.Trainer(accelerator="cpu", precision=precision, logger=False), module, "fit")
    bf16 = precision.startswith("bf16")
    assert free.config._attn_implementation == ("eager" if bf16 else "sdpa")
    assert value.backbone.config._attn_implementation == ("eager" if bf16 else "sdpa")
    assert pinned.config._attn_implementation == "sdpa"
    assert pinned_value.backbone.config._attn_implementation == "sdpa"
    assert cb.switched == (["LlamaForCausalLM", "LlamaModel"] if bf16 else [])


def test_factory_pins_only_an_attention_the_config_sets(tmp_path) -> None:
    model, tok = llama()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    chosen = Pretrained(str(tmp_path / "m"), attn_implementation="sdpa").build("causal_lm")
    default = Pretrained(str(tmp_path / "m")).build("causal_lm")
    module = Holder(chosen=chosen, default=default)
    CPUTuning(keep_freed_memory=False).setup(
        L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False), module, "fit"
    )
    assert chosen.config._attn_implementation == "sdpa"
    assert default.config._attn_implementation == "eager"


def test_eager_bf16_logprobs_match_fp32_sdpa_under_left_padding() -> None:
    """The switched kernel masks left padding as SDPA does: a padded row's log-probs equal the unpadded
    row's (up to bf16 rounding), and every value is finite."""
    model, _ = llama(1)
    model.eval()
    torch.manual_seed(2)
    ids = torch.randint(5, 300, (2, 12))
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # row 1: 4 pad tokens on the left
    with torch.no_grad():
        ref = token_logprobs(model, ids, mask, 8, 1.0)  # fp32, SDPA
        model.set_attn_implementation("eager")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = token_logprobs(model, ids, mask, 8, 1.0)
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max() < 0.15, (got - ref).abs().max()
    # a larger error (a mask ignored: the padded row attends to its pad tokens) moves them by > 0.5
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        unmasked = token_logprobs(model, ids, torch.ones_like(mask), 8, 1.0)
    assert (unmasked[1] - ref[1]).abs().max() > 0.3


RSS_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from lit_rlhf.callbacks.cpu_tuning import keep_freed_memory
    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    before = rss_mb()
    x = torch.ones(256, 2**20 // 4)  # 256 MiB, every page touched
    held = rss_mb()
    del x
    print(round(held - before), round(rss_mb() - before))
    """
)


@pytest.mark.slow  # fresh interpreters
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_keeps_a_freed_buffer_mapped() -> None:
    def run(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        held, after = map(int, out.stdout.split())
        return held, after

    held, after = run("default")
    assert (
        held >= 250 and after < 50
    )  # glibc unmaps a 256 MiB block at free: the next step faults it in again
    held, after = run("keep")
    assert held >= 250 and after >= 250  # kept mapped for the next allocation


TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from lit_rlhf.callbacks.cpu_tuning import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    from transformers import GPT2Config, GPT2LMHeadModel
    m = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)
    for _ in range(10):
        x = torch.randint(0, 500, (16, 48))
        churn = torch.empty(40_000_000)  # a 160 MB buffer freed every step: unmapped, or kept
        del churn
        loss = m(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    print(loss.item().hex(), sum(p.double().sum().item() for p in m.parameters()).hex())
    """
)


@pytest.mark.slow  # fresh interpreters
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keeping_freed_memory_leaves_fp32_training_bit_identical() -> None:
    outs = []
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        outs.append(out.stdout.split())
    assert outs[0] == outs[1] and len(outs[0]) == 2


@pytest.mark.slow  # trains through the pipeline
def test_a_bf16_reward_model_on_a_llama_folder_trains_with_eager_attention(tmp_path, monkeypatch) -> None:
    """``model=hf`` on a SmolLM2-like folder (ChatML template, pad = eos), conversational pairs, bf16 on the
    CPU: the shipped callback switches the loaded model to eager attention, and training moves its weights."""
    from test_families import run_task, write_data  # noqa: PLC0415
    from tiny_hf import make_model_folder  # noqa: PLC0415
    from transformers import AutoModelForSequenceClassification  # noqa: PLC0415

    torch.set_num_threads(1)
    base = make_model_folder("llama", tmp_path / "base")
    data = write_data(tmp_path, chat=True)
    seen: list[tuple[list[str], str]] = []
    real_setup = CPUTuning.setup

    def spy(self, trainer, pl_module, stage):
        real_setup(self, trainer, pl_module, stage)
        seen.append((list(self.switched), pl_module.model.config._attn_implementation))

    monkeypatch.setattr(CPUTuning, "setup", spy)
    out = run_task(
        tmp_path,
        "rm",
        [
            "model=hf",
            f"model.name_or_path={base}",
            "task=reward_model",
            "reward=helpful",
            "data=jsonl",
            f"data.path={data['pairs']}",
            f"data.preference.helpful={data['pairs']}",
            "task.max_epochs=1",
            "task.datamodule.max_length=256",
            "task.module.lr=3e-3",
            "trainer.precision=bf16-mixed",
        ],
    )
    assert seen and seen[0] == (["LlamaForSequenceClassification"], "eager")
    before = AutoModelForCausalLM.from_pretrained(base).model.state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(out).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "training did not move the weights"
