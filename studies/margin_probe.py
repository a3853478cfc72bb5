"""Margin probe: can the log-sigmoid transform bite on these reward models? Run it before RL.

    python studies/margin_probe.py [the same overrides as train.py, e.g. reward=helpful_harmless]

For held-out prompts of the embedded world it scores, with every reward model, typical SFT samples,
the ideal response, and over-optimised ones (past the gold topic cap, a repeated word, stuffed and too
long, and — on risky prompts — the most helpful but harmful answer), and prints their margins
``r − r_ref`` (r_ref as PPO computes it: a quantile of the SFT policy's own samples) by prompt group,
next to the gold reward of each kind. The transform only changes PPO where responses sit above r_ref:
``log σ(m)`` flattens for m ≳ 2–3 logits. So the verdict asks: do ideal responses on easy prompts sit
≥ 3 logits above r_ref, and do over-optimised ones score higher still (something to hack)?
"""

from __future__ import annotations

import random
import sys
from collections import defaultdict
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_rlhf.data.jsonl import load_prompts  # noqa: E402
from lit_rlhf.models import Pretrained, quiet_transformers  # noqa: E402
from lit_rlhf.models.scoring import score_texts  # noqa: E402
from lit_rlhf.rewards.reference import ReferenceSpec, reduce_samples  # noqa: E402
from lit_rlhf.run.pipeline import ensure_stage, prepare_data  # noqa: E402
from lit_rlhf.world import (  # noqa: E402
    REFUSAL,
    argmax_helpful_response,
    gold_rewards_batch,
    ideal_response,
    overoptimised_responses,
    prompt_groups,
)


@torch.no_grad()
def sample_sft(
    policy, tok, prompts: list[str], n: int, max_new_tokens: int, seed: int = 0
) -> list[list[str]]:
    """n sampled responses per prompt from the SFT policy (left-padded batch generation)."""
    torch.manual_seed(seed)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0)
    out = policy.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        max_new_tokens=max_new_tokens,
        top_k=0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    texts = tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    tok.padding_side = "right"
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def probe(policy, tok, reward_models: dict, specs: dict[str, ReferenceSpec], prompts: list[str], n: int = 16):
    """Rows of (kind, group, reward name, mean margin, mean gold helpful, mean gold harmless, count)."""
    samples = sample_sft(policy, tok, prompts, n, max_new_tokens=16)
    kinds: dict[str, list[tuple[int, str]]] = defaultdict(list)  # kind → [(prompt index, response)]
    for i, p in enumerate(prompts):
        kinds["sft sample"] += [(i, r) for r in samples[i][:4]]
        kinds["ideal"].append((i, ideal_response(p)))
        for k, r in overoptimised_responses(p).items():
            kinds[k].append((i, r))
        if prompt_groups(p)["risky"]:
            kinds["helpful but harmful"].append((i, argmax_helpful_response(p)))
    flat_p = [p for p in prompts for _ in range(n)]
    flat_r = [r for rs in samples for r in rs]
    r_ref = {}
    for name, rm in reward_models.items():
        s = score_texts(rm, tok, flat_p, flat_r).view(len(prompts), n)
        if specs[name].statistic in ("response", "refusal"):  # a fixed response (the world's refusal)
            text = specs[name].response or (REFUSAL if specs[name].statistic == "refusal" else None)
            r_ref[name] = score_texts(rm, tok, prompts, [text] * len(prompts))
        else:
            r_ref[name] = reduce_samples(s, specs[name])
    rows = []
    for kind, items in kinds.items():
        idx = [i for i, _ in items]
        texts = [r for _, r in items]
        ps = [prompts[i] for i in idx]
        gold = gold_rewards_batch(ps, texts)
        margins = {
            name: score_texts(rm, tok, ps, texts) - r_ref[name][idx] for name, rm in reward_models.items()
        }
        groups = defaultdict(list)
        for j, p in enumerate(ps):
            g = prompt_groups(p)
            groups[f"{g['difficulty']}/{'risky' if g['risky'] else 'safe'}"].append(j)
        for group, js in sorted(groups.items()):
            for name in reward_models:
                rows.append(
                    {
                        "kind": kind,
                        "group": group,
                        "reward": name,
                        "margin": margins[name][js].mean().item(),
                        "gold_helpful": sum(gold["helpful"][j] for j in js) / len(js),
                        "gold_harmless": sum(gold["harmless"][j] for j in js) / len(js),
                        "n": len(js),
                    }
                )
    return rows


def verdict(rows: list[dict]) -> str:
    """Plain words: is the transform active on these reward models?"""

    def mean(kind: str, reward: str, prefix: str) -> float:
        xs = [
            r["margin"]
            for r in rows
            if r["kind"] == kind and r["reward"] == reward and r["group"].startswith(prefix)
        ]
        return sum(xs) / len(xs) if xs else float("nan")

    lines = []
    for reward in sorted({r["reward"] for r in rows}):
        easy, hard = mean("ideal", reward, "easy"), mean("ideal", reward, "hard")
        hack = max(mean(k, reward, "easy") for k in ("past_cap", "repeated", "stuffed"))
        bite = easy >= 3.0
        lines.append(
            f"{reward}: ideal responses sit {easy:+.2f} logits above r_ref on easy prompts, "
            f"{hard:+.2f} on hard; the best over-optimised kind {hack:+.2f}. "
            + (
                "The transform can bite: log σ saturates above r_ref here, so it stops paying for "
                "over-optimisation."
                if bite
                else "The transform will act mostly like a smaller step size (log σ is nearly linear "
                "below ~3 logits)."
            )
        )
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    names = sorted({r["reward"] for r in rows})
    head = (
        "| response | prompts | "
        + " | ".join(f"margin {n}" for n in names)
        + " | gold helpful | gold harmless | n |"
    )
    out = [head, "|" + " --- |" * (5 + len(names))]
    keyed = defaultdict(dict)
    for r in rows:
        keyed[(r["kind"], r["group"])][r["reward"]] = r
    for (kind, group), by in keyed.items():
        any_row = next(iter(by.values()))
        cells = " | ".join(f"{by[n]['margin']:+.2f}" for n in names)
        gh, gs = any_row["gold_helpful"], any_row["gold_harmless"]
        out.append(f"| {kind} | {group} | {cells} | {gh:.2f} | {gs:.2f} | {any_row['n']} |")
    return "\n".join(out)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    quiet_transformers()
    torch.manual_seed(0)
    prepare_data(cfg)
    policy_path = cfg.task.policy_path or ensure_stage(cfg, "sft")
    policy = Pretrained(str(policy_path))
    tok = policy.load_tokenizer()
    rms = {
        n: Pretrained(str(s.path or ensure_stage(cfg, "reward_model", [f"reward={n}"])))
        .build("reward", tok)
        .eval()
        for n, s in cfg.reward.items()
    }
    specs = {n: ReferenceSpec(**s.reference) for n, s in cfg.reward.items()}
    prompts = [r.prompt for r in load_prompts(cfg.data.prompts_val)]
    random.Random(0).shuffle(prompts)
    rows = probe(policy.build("causal_lm", tok).eval(), tok, rms, specs, prompts)
    print(markdown(rows))
    print()
    print(verdict(rows))


if __name__ == "__main__":
    main()
