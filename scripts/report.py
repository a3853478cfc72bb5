"""One-run report: a PNG panel of a policy-optimisation run, for those who would rather look than open
TensorBoard.

    python scripts/report.py RUN_DIR [--out PNG]

RUN_DIR is a run's folder (e.g. ``outputs/ppo/+transform=logsigmoid``) or its ``tensorboard/`` subfolder;
every TensorBoard event file under it is read with tensorboard's ``EventAccumulator`` (a resumed run's
repeated steps keep the last value). The panel has, from the top:

* the gold win rates against the SFT policy over iterations, with the 0.5 line (= as good as SFT), and the
  KL to the SFT policy (held-out ``gold/kl_to_sft`` and the rollouts' ``<algorithm>/kl``);
* per reward model, the histogram of the margin ``r − r_ref`` at the first and at the last logged step
  (``reward_hist/<name>_margin``; the line at 0 is r = r_ref), and the raw vs the transformed mean reward
  (``reward/<name>_raw``, ``reward/<name>_transformed``, on their own axes: their scales differ).

Writes ``RUN_DIR/report.png`` unless ``--out`` says where. A panel whose tags the run did not log (no gold
rewards, no histograms) says so. A folder without event files, or without a policy run's tags, is an
error (exit status 2, no traceback).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import AutoLocator, MaxNLocator  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402

FIG_WIDTH, ROW_HEIGHT, DPI = 12.0, 3.5, 100  # inches, inches, dots per inch: rows × 350 px by 1200 px
SFT_LEVEL = 0.5  # a win rate against the SFT policy of a policy as good as it
BINS = 30  # margin histograms are redrawn on this many common bins


class ReportError(Exception):
    """A user-input error: printed as ``report.py: error: <message>`` with exit status 2."""


@dataclass
class Histogram:
    """One ``reward_hist/…`` histogram: ``counts[i]`` values in ``(edges[i], edges[i + 1]]``."""

    step: int
    edges: np.ndarray  # (n + 1,)
    counts: np.ndarray  # (n,)
    num: int
    mean: float

    def rebin(self, edges: np.ndarray) -> np.ndarray:
        """Counts in the bins ``edges`` (m + 1,), each bucket's count spread uniformly over its width (a
        zero-width bucket counts where its value is); TensorBoard's buckets are exponential, so two steps are
        compared on common bins."""
        out = np.zeros(len(edges) - 1)  # (m,)
        for lo, hi, c in zip(self.edges[:-1], self.edges[1:], self.counts):
            if hi > lo:
                overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)  # (m,)
                out += c * overlap / (hi - lo)
            else:
                out[np.clip(np.searchsorted(edges, hi, side="right") - 1, 0, len(out) - 1)] += c
        return out


@dataclass
class RunData:
    """What the report draws: scalars as tag → [(step, value)], histograms as tag → by step."""

    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    histograms: dict[str, list[Histogram]] = field(default_factory=dict)

    @property
    def reward_names(self) -> list[str]:
        """Reward models with a ``reward/<name>_raw`` scalar, in the order the run logged them."""
        return list(
            dict.fromkeys(m.group(1) for t in self.scalars if (m := re.fullmatch(r"reward/(.+)_raw", t)))
        )

    @property
    def algorithm(self) -> str | None:
        """The policy algorithm's TensorBoard prefix (``ppo``, ``grpo``, …): the one with a ``<a>/beta``."""
        found = sorted(t.split("/")[0] for t in self.scalars if re.fullmatch(r"[^/]+/beta", t))
        return found[0] if found else None


def histogram_from_proto(step: int, h) -> Histogram:
    """A TensorBoard ``HistogramProto`` as bins: bucket i holds ``(limit[i-1], limit[i]]``, the first one
    from the minimum; the outermost limits are clipped to [min, max] (TensorFlow writes ±DBL_MAX there), and
    empty zero-width bins dropped."""
    limits, counts = np.asarray(h.bucket_limit, float), np.asarray(h.bucket, float)  # (n,) each
    left = np.concatenate([[min(h.min, limits[0])], limits[:-1]])  # (n,)
    right = np.clip(limits, left, max(h.max, left[-1]))  # (n,)
    keep = (right > left) | (counts > 0)
    left, right, counts = left[keep], right[keep], counts[keep]
    edges = np.concatenate([left[:1], right])  # (m + 1,): buckets are contiguous
    return Histogram(step=step, edges=edges, counts=counts, num=int(h.num), mean=h.sum / max(h.num, 1))


def event_folders(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such folder (give a run folder, e.g. outputs/ppo/<name>)")
    folders = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")})
    if not folders:
        raise ReportError(
            f"{run_dir}: no TensorBoard event files (events.out.tfevents.*) under this folder; "
            "runs write them with logger=tensorboard (the default)"
        )
    return folders


def load_run(run_dir: Path) -> RunData:
    """Every scalar and histogram of the event files under ``run_dir`` (a repeated step: the last value)."""
    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    hists: dict[str, dict[int, Histogram]] = defaultdict(dict)
    for folder in event_folders(run_dir):
        acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for ev in acc.Scalars(tag):
                scalars[tag][ev.step] = ev.value
        for tag in acc.Tags()["histograms"]:
            for ev in acc.Histograms(tag):
                hists[tag][ev.step] = histogram_from_proto(ev.step, ev.histogram_value)
    data = RunData(
        scalars={t: sorted(v.items()) for t, v in scalars.items()},
        histograms={t: [v[s] for s in sorted(v)] for t, v in hists.items()},
    )
    if data.algorithm is None and not data.reward_names:
        raise ReportError(
            f"{run_dir}: the event files hold no policy-optimisation tags (<algorithm>/beta, "
            "reward/<name>_raw); report.py draws task=ppo runs"
        )
    return data


# ------------------------------------------------------------------ drawing
def _line(ax, data: RunData, tag: str, label: str | None = None, **kw) -> bool:
    points = data.scalars.get(tag)
    if not points:
        return False
    steps, values = zip(*points)
    ax.plot(steps, values, marker="o" if len(points) < 30 else None, ms=3, label=label or tag, **kw)
    return True


def _missing(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"not logged: {what}", ha="center", va="center", transform=ax.transAxes, color="0.4")


def draw_gold(ax, data: RunData) -> None:
    tags = sorted(t for t in data.scalars if t.startswith("gold/win_rate_"))
    for tag in tags:
        _line(ax, data, tag, tag.removeprefix("gold/"))
    if not tags:
        _missing(ax, "gold/win_rate_* (data without gold rewards)")
        return
    ax.axhline(SFT_LEVEL, color="k", ls="--", lw=1, label="SFT level (0.5)")
    ax.set(title="gold win rate against the SFT policy", xlabel="iteration", ylabel="win rate")
    ax.legend(fontsize=8)


def draw_kl(ax, data: RunData) -> None:
    drawn = _line(ax, data, "gold/kl_to_sft", "held-out (gold/kl_to_sft)")
    if data.algorithm:
        drawn |= _line(ax, data, f"{data.algorithm}/kl", f"rollouts ({data.algorithm}/kl)", alpha=0.7)
    if not drawn:
        _missing(ax, "gold/kl_to_sft, <algorithm>/kl")
        return
    ax.set(title="KL(π ‖ π_SFT)", xlabel="iteration", ylabel="nats per response")
    ax.legend(fontsize=8)


def draw_margins(ax, data: RunData, name: str) -> None:
    hists = data.histograms.get(f"reward_hist/{name}_margin", [])
    if not hists:
        _missing(ax, f"reward_hist/{name}_margin")
        return
    shown = [hists[0], hists[-1]] if len(hists) > 1 else hists[:1]
    lo, hi = min(h.edges[0] for h in shown), max(h.edges[-1] for h in shown)
    if hi <= lo:  # every margin equal
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, BINS + 1)
    above = dict(data.scalars.get(f"reward/{name}_above_ref", []))
    for h, fill in zip(shown, (True, False)):
        share = h.rebin(edges) / max(h.num, 1)  # (BINS,): share of the step's rollouts per bin
        label = f"step {h.step}: mean {h.mean:+.2f}"
        if h.step in above:
            label += f", {above[h.step]:.0%} above r_ref"
        ax.stairs(share, edges, fill=fill, alpha=0.35 if fill else 1.0, lw=1.5, label=label)
    ax.axvline(0.0, color="k", lw=1)
    ax.set(title=f"{name}: margin r − r_ref, first vs last", xlabel="r − r_ref", ylabel="share of rollouts")
    ax.legend(fontsize=8)


def draw_raw_vs_transformed(ax, data: RunData, name: str) -> None:
    if not _line(ax, data, f"reward/{name}_raw", "raw", color="C0"):
        _missing(ax, f"reward/{name}_raw")
        return
    ax.set(title=f"{name}: raw vs transformed reward (mean)", xlabel="iteration")
    ax.set_ylabel("raw", color="C0")
    twin = ax.twinx()
    if _line(twin, data, f"reward/{name}_transformed", "transformed", color="C1"):
        twin.set_ylabel("transformed", color="C1")


def run_title(run_dir: Path) -> str:
    """``<task>/<run name>`` of a run folder (or of its ``tensorboard/`` subfolder)."""
    path = run_dir.resolve()
    if path.name == "tensorboard":
        path = path.parent
    return "/".join(path.parts[-2:])


def report(run_dir: Path, out: Path) -> Path:
    """Draw ``run_dir``'s panel (see the module docstring) into the PNG ``out``; returns ``out``."""
    data = load_run(run_dir)
    names = data.reward_names
    rows = 1 + len(names)
    fig, axes = plt.subplots(rows, 2, figsize=(FIG_WIDTH, ROW_HEIGHT * rows), dpi=DPI, squeeze=False)
    draw_gold(axes[0, 0], data)
    draw_kl(axes[0, 1], data)
    for i, name in enumerate(names, start=1):
        draw_margins(axes[i, 0], data, name)
        draw_raw_vs_transformed(axes[i, 1], data, name)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[1:, 0]:  # margins, not steps
        ax.xaxis.set_major_locator(AutoLocator())
    fig.suptitle(run_title(run_dir), fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)  # no bbox_inches="tight": the size stays rows × 350 px by 1200 px
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder, e.g. outputs/ppo/<name>")
    parser.add_argument(
        "--out", type=Path, default=None, help="the PNG to write (default RUN_DIR/report.png)"
    )
    args = parser.parse_args(argv)
    try:
        out = report(args.run_dir, args.out or args.run_dir / "report.png")
    except ReportError as e:
        print(f"report.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
