"""``TensorBoardLayout``: the TensorBoard page a run opens on, with the numbers to compare side by side.

TensorBoard's scalars plugin shows one card per tag in alphabetical order, so ``reward/helpful_raw`` and
``reward/helpful_transformed`` or the three gold win rates sit on separate cards. This callback writes a
layout for the custom-scalars plugin (TensorBoard's "Custom Scalars" tab) at fit start, one chart per
comparison:

* **transform** — per reward model the raw vs transformed mean reward; the margin ``r − r_ref``, the share
  of rollouts above r_ref and the mean gradient weight du/dr of every reward model; the total reward;
* **gold** (embedded world) — the gold win rates against the SFT policy (0.5 = as good as SFT), the gold
  means of policy and SFT, proxy vs gold win rate and proxy − gold, the KL to SFT;
* **PPO** (``<ALGORITHM>`` of the policy task) — KL and β, reward, losses, clipping, response length,
  skipped batches;
* **training** (SFT and reward models) — train and validation loss; accuracy, margin and reward scale of
  a reward model.

Each chart lists its tags as anchored regular expressions (``re.escape(tag) + "$"``: the plugin matches a
regex at the start of a tag only). Without a TensorBoard logger the callback does nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from lit_rlhf.callbacks.gold_eval import GoldEvalCallback
from lit_rlhf.tasks.reward_model import RewardModelModule
from lit_rlhf.world.generate import PROPERTIES

# section title → chart title → tags shown together on that chart (in legend order)
Layout = dict[str, dict[str, list[str]]]


def transform_section(reward_names: Sequence[str]) -> dict[str, list[str]]:
    """Charts of the reward transform (``RewardTransformCallback``'s ``reward/…`` means)."""
    charts = {}
    for n in reward_names:
        charts[f"{n}: raw vs transformed"] = [f"reward/{n}_raw", f"reward/{n}_transformed"]
    charts["margin r − r_ref (mean)"] = [f"reward/{n}_margin" for n in reward_names]
    charts["share of rollouts above r_ref"] = [f"reward/{n}_above_ref" for n in reward_names]
    charts["mean du/dr (gradient weight)"] = [f"reward/{n}_weight" for n in reward_names]
    charts["total reward (aggregated)"] = ["reward/total"]
    return charts


def gold_section(
    reward_names: Sequence[str], properties: Sequence[str], algorithm: str
) -> dict[str, list[str]]:
    """Charts of the gold evaluation (``GoldEvalCallback``'s ``gold/…`` scalars)."""
    wins = [f"gold/win_rate_{p}" for p in properties]
    if len(properties) >= 2:
        wins.append("gold/win_rate_both")
    charts = {"win rate vs SFT (0.5 = as good as SFT)": wins}
    for p in properties:
        charts[f"gold {p}: policy vs SFT"] = [f"gold/{p}_mean", f"gold/{p}_sft_mean"]
    for n in reward_names:
        charts[f"{n}: proxy vs gold win rate"] = [f"gold/proxy_win_rate_{n}"] + (
            [f"gold/win_rate_{n}"] if n in properties else []
        )
    if any(n in properties for n in reward_names):
        charts["proxy − gold win rate (> 0: reward hacking)"] = ["gold/proxy_minus_gold"]
    charts["KL(π ‖ π_SFT): held-out, rollouts"] = ["gold/kl_to_sft", f"{algorithm}/kl"]
    return charts


def algorithm_section(algorithm: str, critic: bool) -> dict[str, list[str]]:
    """Charts of the policy-optimisation algorithm's ``<algorithm>/…`` scalars; ``critic`` adds the value
    function's loss and clipping."""
    a = algorithm
    value = lambda *tags: list(tags) if critic else []  # noqa: E731
    return {
        "KL to reference: rollouts, held-out": [f"{a}/kl", "val/kl"],
        "β (KL coefficient)": [f"{a}/beta"],
        "reward optimised": [f"{a}/reward"],
        "losses": [f"{a}/pg_loss", *value(f"{a}/vf_loss"), "train/loss"],
        "clip fraction": [f"{a}/clipfrac", *value(f"{a}/vf_clipfrac")],
        "approx KL(π_old ‖ π)": [f"{a}/approx_kl"],
        "response length: rollouts, held-out": [f"{a}/response_length", "val/response_length"],
        "EOS rate": [f"{a}/eos_rate"],
        "entropy proxy": [f"{a}/entropy_proxy"],
        "skipped batches and updates": [f"{a}/skipped_batches", f"{a}/skipped_updates"],
    }


def training_section(reward_model: bool) -> dict[str, list[str]]:
    """Charts of supervised training: SFT, or a reward model when ``reward_model``."""
    charts = {"loss: train, validation": ["train/loss", "val/loss"]}
    if reward_model:
        charts["accuracy: train, validation"] = ["train/rm_acc", "val/rm_acc"]
        charts["validation margin r(chosen) − r(rejected)"] = ["val/margin"]
        charts["validation reward mean and std"] = ["val/reward_mean", "val/reward_std"]
    return charts


def build_layout(
    reward_names: Sequence[str] | None = None,
    algorithm: str | None = None,
    gold_properties: Sequence[str] = (),
    critic: bool = True,
    reward_model: bool = False,
) -> Layout:
    """The dashboard of one run.

    Args:
        reward_names: the policy module's reward models (``None``: not a policy-optimisation task).
        algorithm: the policy module's TensorBoard prefix (``ppo``, ``grpo``, …).
        gold_properties: the gold properties evaluated (empty: no gold section).
        critic: the algorithm has a value function (PPO).
        reward_model: a reward-model run (for a task without ``reward_names``).

    Returns:
        section → chart → exact tags, in display order.
    """
    if reward_names is None or algorithm is None:
        return {"training": training_section(reward_model)}
    layout: Layout = {"transform": transform_section(reward_names)}
    if gold_properties:
        layout["gold"] = gold_section(reward_names, gold_properties, algorithm)
    layout[algorithm.upper()] = algorithm_section(algorithm, critic)
    return layout


def writer_layout(layout: Layout) -> dict[str, dict[str, list]]:
    """``layout`` in the form ``SummaryWriter.add_custom_scalars`` takes: multiline charts of anchored
    regexes (``reward/a_raw`` must not also match ``reward/a_raw_x``)."""
    return {
        section: {title: ["Multiline", [re.escape(t) + "$" for t in tags]] for title, tags in charts.items()}
        for section, charts in layout.items()
    }


def module_layout(trainer: L.Trainer, pl_module: L.LightningModule) -> Layout:
    """The layout of ``pl_module``'s task, read from its ``reward_names`` and ``algorithm`` attributes and
    from whether an enabled ``GoldEvalCallback`` is among the trainer's callbacks."""
    gold = any(isinstance(c, GoldEvalCallback) and c.enabled for c in trainer.callbacks)
    return build_layout(
        reward_names=getattr(pl_module, "reward_names", None),
        algorithm=getattr(pl_module, "algorithm", None),
        gold_properties=PROPERTIES if gold else (),
        critic=getattr(pl_module, "critic", None) is not None,
        reward_model=isinstance(pl_module, RewardModelModule),
    )


class TensorBoardLayout(L.Callback):
    """Writes the run's custom-scalars layout (see the module docstring) into every TensorBoard logger's
    event file at fit start, on rank 0; does nothing without a TensorBoard logger."""

    def __init__(self) -> None:
        self.layout: Layout | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        self.layout = module_layout(trainer, pl_module)
        for lg in loggers:
            lg.experiment.add_custom_scalars(writer_layout(self.layout))
            lg.experiment.flush()  # a TensorBoard open during training shows the layout at once
