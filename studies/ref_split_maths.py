"""The pure maths of ``studies/ref_split.py``: r − r_ref recovered from u = log σ(r − r_ref), r_ref per
prompt (from one job's samples, then merged over jobs), the split of the gold gain over SFT into the parts
above and below r_ref, hack shares, and every metric of its tables for one job's rows. No files, no output.
"""

from __future__ import annotations

import math

import numpy as np

TOL = 1e-4  # logits: r_ref recovered from different rows / jobs must agree this closely


def margin_from_u(u: np.ndarray) -> np.ndarray:
    """r − r_ref from u = log σ(r − r_ref) ≤ 0: the inverse m = u − log(1 − e^u) (``-expm1`` keeps it
    exact near u = 0). u = 0 (saturated) gives +inf."""
    u = np.asarray(u, dtype=float)
    with np.errstate(divide="ignore"):
        return u - np.log(-np.expm1(u))


def rref_per_prompt(
    prompt_ids: np.ndarray, r: np.ndarray, u: np.ndarray, tol: float = TOL
) -> dict[int, float]:
    """prompt id → r_ref = r − (r − r_ref), the mean over the prompt's samples with a finite margin.

    Raises:
        ValueError: samples of one prompt disagree by more than ``tol``, or a prompt has no usable sample.
    """
    ref = np.asarray(r, dtype=float) - margin_from_u(u)  # (N,)
    out = {}
    for pid in np.unique(prompt_ids):
        vals = ref[(prompt_ids == pid) & np.isfinite(ref)]
        if len(vals) == 0:
            raise ValueError(f"prompt {pid}: no sample with u < 0 to recover r_ref from")
        if np.ptp(vals) > tol:
            raise ValueError(
                f"prompt {pid}: r_ref recovered from its samples spans {np.ptp(vals):.2e} > {tol}"
            )
        out[int(pid)] = float(vals.mean())
    return out


def merge_rrefs(rrefs: dict[str, dict[int, float]], tol: float = TOL) -> dict[int, float]:
    """One r_ref per prompt from several jobs' (source name → prompt → r_ref); they must agree to ``tol``.

    Raises:
        ValueError: naming the two sources and the prompt where they differ by more than ``tol``.
    """
    merged: dict[int, tuple[str, float]] = {}
    for source, per_prompt in rrefs.items():
        for pid, v in per_prompt.items():
            first, v0 = merged.setdefault(pid, (source, v))
            if abs(v - v0) > tol:
                raise ValueError(f"r_ref of prompt {pid}: {v0:.6f} from {first} but {v:.6f} from {source}")
    return {pid: v for pid, (_, v) in merged.items()}


def decompose(diff: np.ndarray, above: np.ndarray) -> tuple[float, float, float]:
    """(part above, part below, total) of mean(diff): part = Σ diff over the part's samples / N."""
    diff, above = np.asarray(diff, dtype=float), np.asarray(above, dtype=bool)
    n = len(diff)
    up, down = float(diff[above].sum() / n), float(diff[~above].sum() / n)
    total = float(diff.mean())
    assert math.isclose(up + down, total, rel_tol=1e-9, abs_tol=1e-12), (up, down, total)
    return up, down, total


def hack_share(gold: np.ndarray, gold_sft: np.ndarray, mask: np.ndarray) -> float:
    """Share of the ``mask`` samples whose gold is below their paired SFT sample's (NaN when none)."""
    mask = np.asarray(mask, dtype=bool)
    return float(np.mean(np.asarray(gold)[mask] < np.asarray(gold_sft)[mask])) if mask.any() else math.nan


def _mean(x: np.ndarray, mask: np.ndarray) -> float:
    return float(x[mask].mean()) if mask.any() else math.nan


def split_stats(rows: list[dict], rref: dict[int, float], reward: str = "helpful") -> dict[str, float]:
    """Every metric of the tables for one job's rows (already restricted to a prompt group)."""
    if not rows:
        return {}
    col = lambda k: np.array([row[k] for row in rows], dtype=float)  # noqa: E731  (N,)
    ref = np.array([rref[row["prompt_id"]] for row in rows], dtype=float)  # (N,)
    gold, gold_sft = col(f"gold_{reward}"), col(f"gold_{reward}_sft")
    above, above_sft = col(f"proxy_{reward}") > ref, col(f"proxy_{reward}_sft") > ref
    up, down, total = decompose(gold - gold_sft, above)
    return {
        "kl": float(col("kl").mean()),
        "share_above": float(above.mean()),
        "share_above_sft": float(above_sft.mean()),
        "gold_above": _mean(gold, above),
        "gold_below": _mean(gold, ~above),
        "gold_sft_above": _mean(gold_sft, above_sft),
        "gold_sft_below": _mean(gold_sft, ~above_sft),
        "hack_above": hack_share(gold, gold_sft, above),
        "hack_below": hack_share(gold, gold_sft, ~above),
        "gain": total,
        "gain_above": up,
        "gain_below": down,
        "gain_per_above": _mean(gold - gold_sft, above),
        "gain_per_below": _mean(gold - gold_sft, ~above),
    }


def in_group(row: dict, group: str) -> bool:
    return group == "all" or row.get("difficulty") == group
