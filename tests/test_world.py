"""Tests of the embedded preference world: files, determinism, tokenizer, and the three mechanisms
(conflict, saturation, difficulty) measured with numbers."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from lit_rlhf.world import (
    WorldFiles,
    argmax_helpful_response,
    bayes_ceiling,
    build_world,
    gold_harmless,
    gold_helpful,
    gold_rewards,
    gold_rewards_batch,
    ideal_response,
    load_tokenizer,
    overoptimised_responses,
    prompt_groups,
    sample_response,
)
from lit_rlhf.world.responses import topic_words
from lit_rlhf.world.vocab import TOPIC_NAMES

SMALL = {"n_sft_train": 3000, "n_sft_val": 200, "n_pairs": 1500}
EASY_RISKY = "explain chemistry cost steps please"
EASY_SAFE = "explain cooking cost steps please"
HARD_SAFE = "tell poetry examples tips now"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldFiles:
    return build_world(tmp_path_factory.mktemp("world") / "w", seed=0, **SMALL)


@pytest.fixture(scope="module")
def prompts(world: WorldFiles) -> list[str]:
    return [r["prompt"] for r in _rows(world.prompts_train)]


def _sft_samples(prompts: list[str], k: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    ps = [p for p in prompts for _ in range(k)]
    return ps, [sample_response(p, rng) for p in ps]


def test_files_and_formats(world: WorldFiles) -> None:
    meta = json.loads(world.meta.read_text())
    assert meta["params"]["seed"] == 0 and meta["label_scale"] > 0
    splits = {name: _rows(getattr(world, f"prompts_{name}")) for name in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [768, 64, 64]
    all_prompts = [r["prompt"] for v in splits.values() for r in v]
    assert len(set(all_prompts)) == 896
    assert len({r["id"] for v in splits.values() for r in v}) == 896
    for r in splits["train"][:50]:
        assert set(r) == {"prompt", "id", "difficulty", "risky"}
        assert prompt_groups(r["prompt"]) == {"difficulty": r["difficulty"], "risky": r["risky"]}
    sft = _rows(world.sft_train)
    assert len(sft) == SMALL["n_sft_train"] and len(_rows(world.sft_val)) == SMALL["n_sft_val"]
    assert all(set(r) == {"prompt", "response"} and 1 <= len(r["response"].split()) <= 14 for r in sft)
    train = {r["prompt"] for r in splits["train"]}
    assert {r["prompt"] for r in sft} <= train
    assert {r["prompt"] for r in _rows(world.sft_val)} <= {r["prompt"] for r in splits["val"]}
    for prop, path in world.preference.items():
        pairs = _rows(path)
        assert len(pairs) == SMALL["n_pairs"], prop
        for r in pairs:
            assert set(r) == {"prompt", "chosen", "rejected"}
            assert r["prompt"] and r["chosen"] and r["rejected"] and r["chosen"] != r["rejected"]
            assert r["prompt"] in train


def test_deterministic_and_idempotent(tmp_path: Path, world: WorldFiles) -> None:
    other = build_world(tmp_path / "again", seed=0, **SMALL)
    for a in sorted(p for p in world.root.rglob("*") if p.is_file()):
        b = other.root / a.relative_to(world.root)
        assert a.read_bytes() == b.read_bytes(), a.name
    mtimes = {p: p.stat().st_mtime_ns for p in other.root.rglob("*")}
    assert build_world(tmp_path / "again", seed=0, **SMALL) == other
    assert {p: p.stat().st_mtime_ns for p in other.root.rglob("*")} == mtimes
    with pytest.raises(ValueError, match="n_pairs"):
        build_world(tmp_path / "again", seed=0, **{**SMALL, "n_pairs": 10})
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no leftover temp folders


def test_other_seed_differs(tmp_path: Path, world: WorldFiles) -> None:
    other = build_world(tmp_path / "s1", seed=1, n_sft_train=50, n_sft_val=10, n_pairs=20)
    assert other.prompts_train.read_bytes() != world.prompts_train.read_bytes()


def test_tokenizer_round_trip(world: WorldFiles) -> None:
    tok = load_tokenizer(world.tokenizer)
    assert tok.pad_token_id == 0 and tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token == "<eos>" and tok.unk_token == "<unk>" and tok.padding_side == "right"
    assert 200 <= len(tok) <= 400
    sft = _rows(world.sft_train)[:200]
    for text in [r["prompt"] for r in sft] + [r["response"] for r in sft]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text.split()) and tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    assert tok("pan zebra")["input_ids"][1] == tok.unk_token_id


def test_gold_api() -> None:
    r = gold_rewards(EASY_SAFE, "pan oven salt cheap first")
    assert r == {"helpful": 5.0, "harmless": 0.0}
    assert gold_helpful(EASY_SAFE, "pan") == 1.0 and gold_harmless(EASY_SAFE, "stupid") == -1.0
    batch = gold_rewards_batch([EASY_SAFE, HARD_SAFE], ["pan", "verse rhyme"])
    assert batch["helpful"] == [1.0, pytest.approx(2 / 3)] and batch["harmless"] == [0.0, 0.0]
    assert gold_helpful(EASY_SAFE, "") == 0.0


def test_conflict_on_risky_prompts(prompts: list[str]) -> None:
    risky = [p for p in prompts if prompt_groups(p)["risky"]]
    g = gold_rewards_batch(*_sft_samples(risky, 8))
    corr = np.corrcoef(g["helpful"], g["harmless"])[0, 1]
    assert corr < -0.2, corr
    for p in (EASY_RISKY, *risky[:20]):
        best, ideal = argmax_helpful_response(p), ideal_response(p)
        assert gold_helpful(p, best) > gold_helpful(p, ideal)
        assert gold_harmless(p, best) <= gold_harmless(p, ideal) - 4
    # A safety word buys harmlessness on risky prompts at a small helpfulness cost.
    assert gold_harmless(EASY_RISKY, "acid caution") > gold_harmless(EASY_RISKY, "acid")
    assert gold_helpful(EASY_RISKY, "acid caution") < gold_helpful(EASY_RISKY, "acid")


def test_saturation_past_topic_cap() -> None:
    for prompt, topic in ((EASY_SAFE, "cooking"), (HARD_SAFE, "poetry")):
        words = topic_words(TOPIC_NAMES.index(topic))
        gold = [gold_helpful(prompt, " ".join(words[:k])) for k in range(1, 9)]
        assert all(a < b for a, b in zip(gold[:3], gold[1:3])), gold  # rises up to the cap of 3
        assert all(a > b for a, b in zip(gold[2:], gold[3:])), gold  # then falls
        assert gold[7] < gold[0]  # 8 topic words are worse than 1, while their count is 8x
        ideal = ideal_response(prompt)
        probes = overoptimised_responses(prompt)
        assert set(probes) == {"past_cap", "repeated", "stuffed"}
        for name, text in probes.items():
            assert gold_helpful(prompt, text) < gold_helpful(prompt, ideal), name
        assert gold_helpful(prompt, ideal + " " + words[0]) < gold_helpful(prompt, ideal)  # repeats cost


def test_ideal_is_best_harmless_response(prompts: list[str]) -> None:
    ps, rs = _sft_samples(prompts[::8], 16)
    g = gold_rewards_batch(ps, rs)
    ideal = gold_rewards_batch(ps, [ideal_response(p) for p in ps])
    harmless = [(x, i) for x, s, i in zip(g["helpful"], g["harmless"], ideal["helpful"]) if s >= 0]
    assert all(x <= i for x, i in harmless)
    assert min(ideal["harmless"]) == 0.0


def test_difficulty_and_spread(world: WorldFiles) -> None:
    sft = _rows(world.sft_train)
    g = gold_rewards_batch([r["prompt"] for r in sft], [r["response"] for r in sft])["helpful"]
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for r, x in zip(sft, g):
        by_prompt[r["prompt"]].append(x)
    easy = [np.mean(v) for p, v in by_prompt.items() if prompt_groups(p)["difficulty"] == "easy"]
    hard = [np.mean(v) for p, v in by_prompt.items() if prompt_groups(p)["difficulty"] == "hard"]
    assert np.mean(easy) > 3 * np.mean(hard) and np.mean(easy) - np.mean(hard) > 2.0
    means = np.array(easy + hard)
    assert means.std() > 1.0 and means.max() - means.min() > 4.0
    # Hard prompts are also further below their ideal response in relative terms.
    ideal_gap = {d: [] for d in ("easy", "hard")}
    for p, v in by_prompt.items():
        ideal_gap[prompt_groups(p)["difficulty"]].append(np.mean(v) / gold_helpful(p, ideal_response(p)))
    assert np.mean(ideal_gap["hard"]) < np.mean(ideal_gap["easy"]) - 0.2


def test_bayes_ceiling(world: WorldFiles) -> None:
    s = json.loads(world.meta.read_text())["label_scale"]
    for prop, path in world.preference.items():
        ceiling = bayes_ceiling(path, prop, s)
        assert 0.6 < ceiling < 0.99, (prop, ceiling)
        # Labels follow the gold: the chosen response is more often the gold-better one.
        rows = _rows(path)
        fn = gold_helpful if prop == "helpful" else gold_harmless
        diffs = np.array([fn(r["prompt"], r["chosen"]) - fn(r["prompt"], r["rejected"]) for r in rows])
        assert (diffs > 0).mean() > 2 * (diffs < 0).mean(), prop
    with pytest.raises(ValueError):
        bayes_ceiling(world.preference["helpful"], "funny", s)


@pytest.mark.slow  # generates the default world
def test_default_world_properties(tmp_path: Path) -> None:
    """The default sizes build in seconds and show the mechanisms on the full demonstration set."""
    files = build_world(tmp_path / "default")
    stats = json.loads(files.meta.read_text())["stats"]
    assert stats["sft_gold_helpful_mean"]["easy"] > 3 * stats["sft_gold_helpful_mean"]["hard"]
    assert 0.75 < stats["bayes_ceiling"]["helpful"] < 0.95
    sft = _rows(files.sft_train)
    risky = [r for r in sft if prompt_groups(r["prompt"])["risky"]]
    g = gold_rewards_batch([r["prompt"] for r in risky], [r["response"] for r in risky])
    assert np.corrcoef(g["helpful"], g["harmless"])[0, 1] < -0.2
