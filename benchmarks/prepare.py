"""Write what both sides share into ``benchmarks/runs/``: settings, world, models, data in a fixed order.

Run with lit_rlhf's venv (``/work/venv/bin/python benchmarks/prepare.py``); ``run.py`` calls it.

* ``world-v<WORLD_VERSION>/``: the embedded world (``build_world(seed)``), whose tokenizer both sides load;
* ``models/policy`` (GPT-2 LM) and ``models/reward`` (GPT-2 + scalar head), one GPT2Config, saved with
  ``save_pretrained``: both sides load the same weights (policy = actor and reference; reward folder =
  reward model and the critic's initial backbone);
* ``data/prompts.jsonl``: the training prompts of the modal token length, so no batch needs padding and
  both sides process the same number of prompt tokens whatever their shuffling;
* ``data/pairs.jsonl``: the preference pairs lit_rlhf's ``PreferenceDataModule`` reads, and
  ``data/pairs_ids.jsonl``: the same pairs tokenised by lit_rlhf and listed in the exact order lit_rlhf's
  shuffled loader yields them, which the TRL side reads sequentially: identical batches on both sides.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, Settings, log  # noqa: E402

from lit_rlhf.data.datamodules import PreferenceDataModule  # noqa: E402
from lit_rlhf.models.factory import TinyGPT2, load_tokenizer, quiet_transformers  # noqa: E402
from lit_rlhf.world import build_world  # noqa: E402
from lit_rlhf.world.generate import WORLD_VERSION  # noqa: E402


def main() -> None:
    quiet_transformers()
    s = Settings()
    RUNS.mkdir(exist_ok=True)
    s.dump()
    world = build_world(RUNS / f"world-v{WORLD_VERSION}", seed=s.seed)
    tok = load_tokenizer(world.tokenizer)

    # models: one config, saved once
    spec = TinyGPT2(n_layer=s.n_layer, n_embd=s.n_embd, n_head=s.n_head, n_positions=s.n_positions)
    models = RUNS / "models"
    for head, name in (("causal_lm", "policy"), ("reward", "reward")):  # rebuilt every time: seconds
        torch.manual_seed(s.seed)
        spec.build(head, tok).save_pretrained(models / name)
    tok.save_pretrained(models / "tokenizer")

    data = RUNS / "data"
    data.mkdir(exist_ok=True)
    # prompts of the modal length
    records = [json.loads(line) for line in world.prompts_train.read_text().splitlines()]
    lengths = [len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in records]
    modal = Counter(lengths).most_common(1)[0][0]
    kept = [r for r, n in zip(records, lengths) if n == modal]
    (data / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (data / "prompts_meta.json").write_text(json.dumps({"prompt_tokens": modal, "n_prompts": len(kept)}))

    # preference pairs: exactly the pairs the timed run needs, in lit_rlhf's loader order
    n_pairs = s.rm_batch_pairs * (s.rm_warmup_steps + s.rm_steps)
    pairs = world.preference["helpful"].read_text().splitlines()[:n_pairs]
    (data / "pairs.jsonl").write_text("".join(line + "\n" for line in pairs))
    dm = PreferenceDataModule(
        tok,
        path=str(data / "pairs.jsonl"),
        val_fraction=0.0,
        seed=s.seed,
        batch_size=s.rm_batch_pairs,
        max_prompt_tokens=s.rm_max_prompt_tokens,
        max_length=s.rm_max_length,
    )
    dm.setup("fit")
    rows = []
    for batch in dm.train_dataloader():  # (2B, T) right padded: chosen rows, then rejected rows
        ids, mask = batch["input_ids"], batch["attention_mask"]
        B = len(ids) // 2
        unpad = [ids[i][mask[i].bool()].tolist() for i in range(len(ids))]
        rows += [{"chosen_ids": unpad[i], "rejected_ids": unpad[B + i]} for i in range(B)]
    (data / "pairs_ids.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    log(f"[prepare] {len(kept)} prompts of {modal} tokens, {len(rows)} pairs, models in {models}")


if __name__ == "__main__":
    main()
