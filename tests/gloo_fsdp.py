"""The worker of tests/test_fsdp2_collectives.py: tiny models sharded with FSDP2 over a 2-process gloo group
(``lit_rlhf.training.fsdp.shard_model``), each rank holding half of every weight. A module of its own so
that the spawned processes import only what they need."""

from __future__ import annotations

import torch
import torch.distributed as dist
from tiny_hf import make_config, make_tokenizer
from torch.distributed.device_mesh import init_device_mesh
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lit_rlhf.models.heads import sequence_scores
from lit_rlhf.rewards.reference import module_fingerprint, reward_fingerprint
from lit_rlhf.rollout.decoding import row_seeds
from lit_rlhf.rollout.rollout import eos_token_ids, generate, sampling_config
from lit_rlhf.training.fsdp import is_sharded, shard_model

PROMPTS = ["How do I boil an egg?", "Paris", "Tell me a joke about cats", "soup"]


def models(perturb: bool = False):
    tok = make_tokenizer("llama")
    torch.manual_seed(0)
    cfg = make_config("llama", tok, hidden=32, layers=2)
    lm = AutoModelForCausalLM.from_config(cfg).eval()
    cfg.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(cfg).eval()
    if perturb:  # another model: one weight of one block differs
        with torch.no_grad():
            lm.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    return tok, lm, rm


def batch(tok) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tok(p).input_ids for p in PROMPTS]
    P = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (P - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@torch.no_grad()
def compute(tok, lm, rm, rows: slice) -> dict:
    """Fingerprints, samples of ``rows`` (with per-row seeds) and their reward scores."""
    ids, mask = batch(tok)
    config = sampling_config(tok, eos_token_ids(tok, [lm]), max_new_tokens=6, temperature=1.0)
    seeds = row_seeds((0,), range(len(PROMPTS)))[rows]
    seq, rmask, _ = generate(lm, ids[rows], mask[rows], config, tok.pad_token_id, seeds=seeds)
    full = torch.cat([mask[rows], rmask], 1)
    return {
        "lm": module_fingerprint(lm),
        "rm": reward_fingerprint(rm),
        "responses": [r[m.bool()].tolist() for r, m in zip(seq[:, ids.shape[1] :], rmask)],
        "scores": sequence_scores(rm, seq, full),
    }


def worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    res = {}
    for name, perturb in (("same", False), ("other", True)):
        tok, lm, rm = models(perturb)
        shard_model(lm, mesh)
        shard_model(rm, mesh)
        assert is_sharded(lm) and is_sharded(rm)
        # rank 0 samples one row, rank 1 three: generate must keep both stepping (synced_gpus)
        res[name] = compute(tok, lm, rm, slice(0, 1) if rank == 0 else slice(1, 4))
    torch.save(res, f"{out}.{rank}")
    dist.destroy_process_group()
