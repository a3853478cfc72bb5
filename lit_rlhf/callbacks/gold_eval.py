"""``GoldEvalCallback``: what the paper measures, on the embedded world's hidden gold rewards.

At every evaluation PPO's ``validation_step`` samples responses from the policy and from the SFT
(reference) policy for held-out prompts. This callback scores both with the gold functions and logs:

* ``gold/win_rate_<prop>`` — P(gold(policy) > gold(SFT)) + ½·P(tie), per property;
* ``gold/win_rate_both`` — mean of w_helpful·w_harmless with w = 1 win, ½ tie, 0 loss (being better on
  both; at π = π_SFT it is E[w_h·w_s], not ½ — compare methods with each other);
* ``gold/kl_to_sft`` — mean sequence KL(π‖π_SFT) of the policy's samples;
* ``gold/proxy_minus_gold`` — the learned reward's win rate minus the gold win rate (first property that
  has a reward model of the same name): > 0 means the proxy sees progress the gold does not (hacking);
* ``gold/<prop>_mean`` and ``gold/<prop>_sft_mean``; and a text table of a few prompts.

It also writes the per-prompt results of the last evaluation to ``<log_dir>/gold_eval.jsonl`` (gold of
policy and SFT per prompt, with the prompt's group) for the underfitting analysis in ``scripts/``.

Under DDP every rank evaluates a share of the prompts: at the end of the evaluation the rows of all ranks
are gathered (each rank then holds all of them), rows that the distributed sampler repeated to even out
the ranks are dropped (a row is identified by its prompt id and sample number), and the metrics are
computed over the rows in (prompt id, sample) order — the same numbers as one process evaluating the
same prompts. Rank 0 writes every row.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning as L
import torch

from lit_rlhf.callbacks.distributed import gather_objects
from lit_rlhf.callbacks.progress import scalar_step
from lit_rlhf.utils.io import atomic_write
from lit_rlhf.world import gold_rewards_batch, prompt_groups


def win(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 where a > b, ½ where equal, 0 where a < b."""
    return (a > b).float() + 0.5 * (a == b).float()


def unique_rows(rows: list[dict]) -> list[dict]:
    """Rows in (prompt id, sample) order, the first of any repeated (prompt id, sample) kept."""
    seen: dict[tuple[int, int], dict] = {}
    for r in rows:
        seen.setdefault((r["prompt_id"], r["sample"]), r)
    return [seen[k] for k in sorted(seen)]


class GoldEvalCallback(L.Callback):
    """Gold-reward evaluation of PPO against the SFT policy (embedded world only).

    Args:
        table_rows: prompts shown in the TensorBoard text table.
        write_jsonl: write per-prompt results of the last evaluation next to the logs.
        enabled: off for data without gold rewards (``data.gold=false``, e.g. your own JSONL).
    """

    def __init__(self, table_rows: int = 6, write_jsonl: bool = True, enabled: bool = True) -> None:
        self.table_rows, self.write_jsonl, self.enabled = table_rows, write_jsonl, enabled
        self.rows: list[dict] = []
        self._samples: Counter[int] = Counter()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.rows, self._samples = [], Counter()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not self.enabled or not isinstance(outputs, dict) or "policy_responses" not in outputs:
            return
        gold_p = gold_rewards_batch(outputs["prompts"], outputs["policy_responses"])
        gold_s = gold_rewards_batch(outputs["prompts"], outputs["sft_responses"])
        for i, prompt in enumerate(outputs["prompts"]):
            pid = int(outputs["prompt_ids"][i])
            row = {
                "prompt_id": pid,
                "sample": self._samples[pid],  # k-th response to this prompt on this rank
                "prompt": prompt,
                "policy": outputs["policy_responses"][i],
                "sft": outputs["sft_responses"][i],
                "kl": float(outputs["kl"][i]),
                **{f"gold_{k}": float(v[i]) for k, v in gold_p.items()},
                **{f"gold_{k}_sft": float(v[i]) for k, v in gold_s.items()},
                **{
                    f"proxy_{n}": float(outputs["policy_scores"][i, k])
                    for k, n in enumerate(pl_module.reward_names)
                },
                **{
                    f"proxy_{n}_sft": float(outputs["sft_scores"][i, k])
                    for k, n in enumerate(pl_module.reward_names)
                },
                **prompt_groups(prompt),
            }
            if "policy_transformed" in outputs:
                for k, n in enumerate(pl_module.reward_names):
                    row[f"transformed_{n}"] = float(outputs["policy_transformed"][i, k])
            self._samples[pid] += 1
            self.rows.append(row)

    def metrics(self, reward_names: list[str]) -> dict[str, float]:
        """Aggregate the evaluation's rows into the ``gold/*`` scalars."""
        col = lambda k: torch.tensor([r[k] for r in self.rows], dtype=torch.float64)  # noqa: E731
        props = [k[len("gold_") :] for k in self.rows[0] if k.startswith("gold_") and not k.endswith("_sft")]
        out: dict[str, float] = {"gold/kl_to_sft": col("kl").mean().item()}
        wins = {}
        for p in props:
            wins[p] = win(col(f"gold_{p}"), col(f"gold_{p}_sft"))
            out[f"gold/win_rate_{p}"] = wins[p].mean().item()
            out[f"gold/{p}_mean"] = col(f"gold_{p}").mean().item()
            out[f"gold/{p}_sft_mean"] = col(f"gold_{p}_sft").mean().item()
        if len(wins) >= 2:
            both = torch.ones_like(next(iter(wins.values())))
            for w in wins.values():
                both = both * w
            out["gold/win_rate_both"] = both.mean().item()
        for n in reward_names:
            proxy = win(col(f"proxy_{n}"), col(f"proxy_{n}_sft")).mean().item()
            out[f"gold/proxy_win_rate_{n}"] = proxy
            if n in wins and "gold/proxy_minus_gold" not in out:
                out["gold/proxy_minus_gold"] = proxy - wins[n].mean().item()
        return out

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        self.rows = unique_rows(gather_objects(self.rows))  # a collective: every rank takes part
        if not self.rows:
            return
        metrics = self.metrics(pl_module.reward_names)
        # every rank computed the same values from all ranks' rows: "max" returns them exactly where a
        # mean over ranks could round
        pl_module.log_dict({k: torch.tensor(v) for k, v in metrics.items()}, sync_dist=True, reduce_fx="max")
        if not trainer.is_global_zero:
            return
        exp = getattr(pl_module.logger, "experiment", None)
        if exp is not None and hasattr(exp, "add_text"):
            exp.add_text("samples", self.table(pl_module.reward_names), scalar_step(trainer))
        log_dir = getattr(pl_module.logger, "log_dir", None)
        if self.write_jsonl and log_dir:
            path = Path(log_dir) / "gold_eval.jsonl"
            with atomic_write(path) as f:
                for r in self.rows:
                    f.write(json.dumps({"step": scalar_step(trainer), **r}) + "\n")

    def table(self, reward_names: list[str]) -> str:
        """Markdown table: a few prompts with SFT and policy responses and their rewards."""
        seen, lines = set(), []
        head = "| prompt | SFT response | policy response | " + " | ".join(
            f"{n} raw / transformed / gold (SFT gold)" for n in reward_names
        )
        lines += [head + " |", "|" + " --- |" * (3 + len(reward_names))]
        for r in self.rows:
            if r["prompt_id"] in seen or len(seen) >= self.table_rows:
                continue
            seen.add(r["prompt_id"])
            cells = []
            for n in reward_names:
                t = r.get(f"transformed_{n}", float("nan"))
                g = r.get(f"gold_{n}", float("nan"))
                gs = r.get(f"gold_{n}_sft", float("nan"))
                cells.append(f"{r[f'proxy_{n}']:.2f} / {t:.2f} / {g:.2f} ({gs:.2f})")
            lines.append(f"| {r['prompt']} | {r['sft']} | {r['policy']} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
