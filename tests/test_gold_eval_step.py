"""The gold evaluation's sample table sits on the step axis of the scalars beside it.

Lightning logs a policy task's scalars once per iteration (``_batches_that_stepped``), while
``trainer.global_step`` counts every optimizer step (epochs × minibatches × optimizers per iteration): a
table logged at ``global_step`` lands far to the right of the ``gold/*`` scalars of the same evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace

from lit_rlhf.callbacks.gold_eval import GoldEvalCallback

ROW = {
    "prompt_id": 0,
    "sample": 0,
    "prompt": "p",
    "policy": "a",
    "sft": "b",
    "kl": 0.1,
    "gold_helpful": 1.0,
    "gold_helpful_sft": 0.0,
    "proxy_helpful": 0.5,
    "proxy_helpful_sft": 0.2,
}


def test_sample_table_and_jsonl_use_the_scalars_step(tmp_path) -> None:
    texts: list[tuple[str, int]] = []
    experiment = SimpleNamespace(add_text=lambda tag, text, step: texts.append((tag, step)))
    logger = SimpleNamespace(experiment=experiment, log_dir=str(tmp_path))
    module = SimpleNamespace(reward_names=["helpful"], logger=logger, log_dict=lambda *a, **k: None)
    # iteration 3 of PPO with 2 epochs × 2 minibatches × 2 optimizers: 24 optimizer steps
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=3))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=24, fit_loop=loop)
    cb = GoldEvalCallback()
    cb.rows = [dict(ROW)]
    cb.on_validation_epoch_end(trainer, module)
    assert texts == [("samples", 3)]
    (line,) = (tmp_path / "gold_eval.jsonl").read_text().splitlines()
    assert json.loads(line)["step"] == 3
