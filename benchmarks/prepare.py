"""Write what both sides share into ``benchmarks/runs/<size>/``: settings, tokenizer, models, data.

Run with lit_rlhf's interpreter (``.venv/bin/python benchmarks/prepare.py --size toy``); ``run.py`` calls it.

* ``models/policy`` (LM) and ``models/reward`` (scalar head), one config (:func:`sizes.model_config`), random
  weights, saved with ``save_pretrained``: both sides load the same weights (policy = actor and reference;
  reward folder = reward model and the critic's initial backbone); ``models/tokenizer`` is the tokenizer;
* ``data/prompts.jsonl``: prompts that all have the same token length (``prompts_meta.json``), so no batch
  needs padding and both sides process the same number of prompt tokens whatever their shuffling;
* ``data/pairs.jsonl``: the preference pairs lit_rlhf's ``PreferenceDataModule`` reads, and
  ``data/pairs_ids.jsonl``: the same pairs tokenised by lit_rlhf and listed in the exact order lit_rlhf's
  shuffled loader yields them, which the TRL side reads sequentially: identical batches on both sides.

``toy`` takes tokenizer, prompts (those of the modal length) and pairs from the embedded world; ``smollm2``
makes them (:mod:`sizes`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # benchmarks/ and the checkout's lit_rlhf
from common import MODELS, SIZES, Settings, log, runs_dir  # noqa: E402
from sizes import model_config, synthetic_pairs, synthetic_prompts, word_tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

from lit_rlhf.data.datamodules import PreferenceDataModule  # noqa: E402
from lit_rlhf.models.factory import load_tokenizer, quiet_transformers  # noqa: E402
from lit_rlhf.world import build_world  # noqa: E402
from lit_rlhf.world.generate import WORLD_VERSION  # noqa: E402


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def world_data(s: Settings, runs: Path) -> tuple[Path, list[dict], list[dict]]:
    """The world's tokenizer folder, its training prompts of the modal length and its helpful pairs."""
    world = build_world(runs / f"world-v{WORLD_VERSION}", seed=s.seed)
    tok = load_tokenizer(world.tokenizer)
    records = [json.loads(line) for line in world.prompts_train.read_text().splitlines()]
    lengths = [len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in records]
    modal = s.prompt_tokens or Counter(lengths).most_common(1)[0][0]
    prompts = [r for r, n in zip(records, lengths) if n == modal]
    n_pairs = s.rm_batch_pairs * (s.rm_warmup_steps + s.rm_steps)
    pairs = [json.loads(line) for line in world.preference["helpful"].read_text().splitlines()[:n_pairs]]
    return world.tokenizer, prompts, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="toy")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    a = ap.parse_args()
    s = SIZES[a.size].override(a.set)
    quiet_transformers()
    runs = runs_dir(s.size)
    s.dump()
    models, data = runs / "models", runs / "data"
    data.mkdir(parents=True, exist_ok=True)
    if s.data == "world":
        tok_dir, prompts, pairs = world_data(s, runs)
        tok = load_tokenizer(tok_dir)
    else:
        tok = word_tokenizer(MODELS[s.size]["vocab_size"])
        prompts, pairs = synthetic_prompts(s, len(tok)), synthetic_pairs(s, len(tok))
    tok.save_pretrained(models / "tokenizer")

    lengths = {len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in prompts}
    if len(lengths) != 1:
        raise RuntimeError(f"prompts of several token lengths {sorted(lengths)}: batches would need padding")

    # models: one config, random weights, saved once (rebuilt every time: seconds for toy, ~1 min smollm2)
    longest = max(min(lengths) + s.ppo_max_new_tokens, s.rm_max_length)
    config = model_config(s.size, tok, min_positions=longest)
    for auto, name in ((AutoModelForCausalLM, "policy"), (AutoModelForSequenceClassification, "reward")):
        torch.manual_seed(s.seed)
        auto.from_config(config).save_pretrained(models / name)
    write_jsonl(data / "prompts.jsonl", prompts)
    meta = {"prompt_tokens": lengths.pop(), "n_prompts": len(prompts)}
    (data / "prompts_meta.json").write_text(json.dumps(meta))

    # preference pairs: exactly the pairs the timed run needs, in lit_rlhf's loader order
    write_jsonl(data / "pairs.jsonl", pairs)
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
    write_jsonl(data / "pairs_ids.jsonl", rows)
    log(
        f"[prepare] {s.size} {meta['n_prompts']} prompts of {meta['prompt_tokens']} tokens; {len(rows)} pairs"
    )


if __name__ == "__main__":
    main()
