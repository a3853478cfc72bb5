"""RewardModelModule: the loss is the Bradley–Terry formula on the model's own scores, chosen and rejected
go through one forward, training moves the weights, and the saved folder reloads without our code."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

from lit_rlhf.tasks.reward_model import RewardModelModule


def tiny_rm() -> GPT2ForSequenceClassification:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=1, pad_token_id=0
    )
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0  # deterministic forwards
    return GPT2ForSequenceClassification(cfg)


def batch(B: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50, (2 * B, 7), generator=g)
    ids[:, -2:] = 0  # right padding
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_loss_is_bradley_terry_on_one_forward(monkeypatch):
    model = tiny_rm()
    module = RewardModelModule(model, torch.optim.AdamW, margin=0.5, center_coef=0.01)
    calls = []
    backbone_forward = model.transformer.forward
    monkeypatch.setattr(
        model.transformer,
        "forward",
        lambda *a, **k: (
            calls.append(k.get("input_ids", a[0] if a else None).shape) or backbone_forward(*a, **k)
        ),
    )
    b = batch()
    loss = module.training_step(b, 0)
    assert calls == [(8, 7)]  # chosen and rejected together, one backbone forward
    with torch.no_grad():  # pad ≠ eos here, so transformers' own pooling reads the same last token
        r = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, 0]
    rc, rr = r[:4], r[4:]
    expected = -F.logsigmoid(rc - rr - 0.5).mean() + 0.01 * ((rc + rr) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_training_moves_weights_and_saved_folder_reloads(tmp_path):
    model = tiny_rm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    b = batch()
    loader = DataLoader([b], batch_size=None)
    module = RewardModelModule(model, torch.optim.AdamW, lr=1e-2)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, train_dataloaders=loader)
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "score.weight" in moved and any(k.startswith("transformer.h.0") for k in moved)
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        a = model(**b).logits
        c = again(**b).logits
    torch.testing.assert_close(a, c)


def test_cosine_schedule_warms_up_peaks_and_reaches_zero():
    from lit_rlhf.training.optim import warmup_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_schedule(opt, warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.5, 1.0, 1.5, 2.0]  # linear warm-up
    assert lrs[4] == 2.0 and lrs[9] == 1.0  # cosine: peak, half way at the middle of the decay
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # strictly decreasing after warm-up
    assert opt.param_groups[0]["lr"] == 0.0
    short = warmup_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0), 4, total_steps=3)
    assert short.get_last_lr() == [0.5]  # a run shorter than its warm-up only warms up


def test_reward_model_init_choices():
    """auto: the SFT stage for the embedded tiny model on the embedded world, the model's own weights for a
    model folder, and for a fresh tiny model on user preference data (which has no SFT file to build from)."""
    from omegaconf import OmegaConf

    from lit_rlhf.run.pipeline import reward_model_init

    def cfg(init: str, target: str, world: bool = True) -> OmegaConf:
        data = {"world": {"seed": 0} if world else None}
        return OmegaConf.create({"task": {"init_from": init}, "model": {"_target_": target}, "data": data})

    sft = lambda: "/stages/sft/model"  # noqa: E731
    assert reward_model_init(cfg("auto", "lit_rlhf.models.TinyGPT2"), sft) == "/stages/sft/model"
    assert reward_model_init(cfg("auto", "lit_rlhf.models.Pretrained"), sft) == "model"
    assert reward_model_init(cfg("auto", "lit_rlhf.models.TinyGPT2", world=False), sft) == "model"
    assert reward_model_init(cfg("sft", "lit_rlhf.models.Pretrained"), sft) == "/stages/sft/model"
    assert reward_model_init(cfg("model", "lit_rlhf.models.TinyGPT2"), sft) == "model"
    assert reward_model_init(cfg("/my/folder", "lit_rlhf.models.TinyGPT2"), sft) == "/my/folder"
