"""The margin probe's numbers are r − r_ref as defined, and its verdict follows them."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from conftest import ROOT, TINY_STAGES, TINY_WORLD, hydra_cfg
from lit_rlhf.data.jsonl import load_prompts
from lit_rlhf.models.scoring import score_texts
from lit_rlhf.rewards.reference import ReferenceSpec
from lit_rlhf.run.pipeline import ensure_stage

sys.path.insert(0, str(ROOT / "studies"))
from margin_probe import markdown, probe, sample_sft, verdict  # noqa: E402

pytestmark = pytest.mark.slow  # builds the tiny world's stages


def test_probe_margins_and_verdict(tmp_path, stage_cache):
    with hydra_cfg(tmp_path, [*TINY_WORLD, *TINY_STAGES], cache=stage_cache) as cfg:
        sft_dir = ensure_stage(cfg, "sft")
        rm_dir = ensure_stage(cfg, "reward_model", ["reward=helpful"])
    tok = AutoTokenizer.from_pretrained(sft_dir)
    policy = AutoModelForCausalLM.from_pretrained(sft_dir).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    prompts = [r.prompt for r in load_prompts(cfg.data.prompts_val)][:6]
    spec = {"helpful": ReferenceSpec(statistic="quantile", q=0.85)}
    rows = probe(policy, tok, {"helpful": rm}, spec, prompts, n=8)
    kinds = {r["kind"] for r in rows}
    assert {"sft sample", "ideal", "past_cap", "repeated", "stuffed"} <= kinds

    # recompute one number by hand: the ideal response's margin on a single prompt
    prompts = prompts[:1]
    rows = probe(policy, tok, {"helpful": rm}, spec, prompts, n=8)
    samples = sample_sft(policy, tok, prompts, 8, max_new_tokens=16)
    r_ref = torch.quantile(score_texts(rm, tok, [prompts[0]] * 8, samples[0]), 0.85)
    from lit_rlhf.world import ideal_response, prompt_groups

    g = prompt_groups(prompts[0])
    group = f"{g['difficulty']}/{'risky' if g['risky'] else 'safe'}"
    ideal = score_texts(rm, tok, [prompts[0]], [ideal_response(prompts[0])])[0]
    row = next(r for r in rows if r["kind"] == "ideal" and r["group"] == group)
    assert abs(row["margin"] - (ideal - r_ref).item()) < 1e-4
    assert row["gold_helpful"] > 0

    text = verdict(rows)
    easy = [r for r in rows if r["kind"] == "ideal" and r["group"].startswith("easy")][0]["margin"]
    assert ("can bite" in text) == (easy >= 3.0)
    assert "| ideal |" in markdown(rows)
