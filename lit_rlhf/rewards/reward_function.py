"""Reward functions beside reward models (``reward.<name>.function``), scored as TRL's ``reward_funcs``.

A reward function is called once per batch of rollouts, as TRL calls its reward functions::

    fn(prompts=[...], completions=[...], completion_ids=[[...], ...], **columns) -> list[float | None]

``prompts`` are the dataset's prompts (a string, or a conversation's messages), ``completions`` the
decoded responses (for conversational prompts ``[{"role": "assistant", "content": text}]``, as TRL
passes them), ``completion_ids`` the response token ids, and ``columns`` the dataset's other columns, one
list each (e.g. ``answer=[...]``). It returns one float or ``None`` per rollout; ``None`` means "does not
apply": that rollout is left out of this reward's term, of the aggregate (as if the reward were absent)
and of its statistics — it is not a zero.

Each function declares what its number is (``reward.<name>.kind``), which fixes how the paper's
transform treats it (Wang et al., 2024: a sum of transformed rewards is ``log P(good on all)``):

* ``logit`` — a Bradley–Terry-style logit: the ``+transform`` and r_ref apply exactly as for a reward
  model (``u = log σ(r − r_ref)`` under ``+transform=logsigmoid``);
* ``probability`` — the probability that the response is good, in [0, 1]: ``u = log max(p, ε)``
  (ε = ``reward.<name>.eps``) whatever the ``+transform``, so that a sum with log-sigmoid terms is the
  log-probability of good on all;
* ``score`` — any other number: the ``+transform`` (or ``reward.<name>.transform``) and r_ref from the
  SFT policy's samples apply as for a reward model.

A function that raises, returns NaN/inf (or a probability outside [0, 1]) or a list of the wrong length
stops the run with one line naming the function and the row (:class:`RewardFunctionError`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lit_rlhf.rewards.transforms import RewardTransform

KINDS = ("logit", "probability", "score")
SPEC_KEYS = {"function", "kind", "eps", "transform", "reference", "data", "path"}


class RewardFunctionError(ValueError):
    """A reward function failed on a batch: the message names the function, the row and what went wrong."""


def log_probability(p: Tensor, eps: float) -> Tensor:
    """``u = log max(p, ε)``: a probability of "good" as the log-probability the AND-sum adds up."""
    return torch.log(p.clamp_min(eps))


class LogProbability(RewardTransform):
    """The transform of a ``probability`` reward: ``u = log max(p, ε)``, with no reference.

    Args:
        eps: the floor ε > 0 of p, so that p = 0 costs ``log ε`` rather than ``-inf``.
    """

    def __init__(self, eps: float = 1e-4) -> None:
        if not 0 < eps < 1:
            raise ValueError(f"reward.<name>.eps must be in (0, 1), got {eps}")
        self.eps = float(eps)

    def __call__(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        self._inputs(r, None)
        return log_probability(r, self.eps)

    def weight(self, r: Tensor, r_ref: Tensor | None = None) -> Tensor:
        """``du/dp = 1/p`` above ε, 0 below (where the floor holds u constant)."""
        return torch.where(r > self.eps, 1.0 / r.clamp_min(self.eps), torch.zeros_like(r))

    def __repr__(self) -> str:
        return f"LogProbability(eps={self.eps})"


def import_function(path: str, key: str) -> Callable[..., Any]:
    """``"package.module:function"`` (or ``package.module.function``) → the function."""
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{key}={path}: cannot import it ({type(err).__name__}: {err})") from None
    if not callable(fn):
        raise ValueError(f"{key}={path}: not callable")
    return fn


def is_function_spec(spec: Any) -> bool:
    """Whether a ``reward.<name>`` entry is a reward function (it has a ``function`` key)."""
    return isinstance(spec, Mapping) and spec.get("function") is not None


class RewardFunction:
    """One reward function, validated and called on a batch.

    Args:
        name: the ``reward.<name>`` entry (TensorBoard ``reward/<name>_raw``, ``…_transformed``).
        function: the callable, or ``"package.module:function"``; a Hydra ``_target_`` mapping is
            instantiated by Hydra before it gets here (a class's instance, or a function with
            ``_partial_: true``).
        kind: ``logit`` | ``probability`` | ``score`` (see the module docstring).
        eps: the floor ε of a ``probability`` reward: ``u = log max(p, ε)``.
    """

    def __init__(
        self, name: str, function: Callable[..., Any] | str, kind: str = "score", eps: float = 1e-4
    ) -> None:
        key = f"reward.{name}"
        if kind not in KINDS:
            raise ValueError(f"{key}.kind must be one of {KINDS}, got {kind!r}")
        if isinstance(function, Mapping):
            raise ValueError(f"{key}.function: a _target_ mapping must be instantiated first (hydra)")
        self.fn = import_function(function, f"{key}.function") if isinstance(function, str) else function
        if not callable(self.fn):
            raise ValueError(f"{key}.function must be callable, got {type(self.fn).__name__}")
        self.name, self.kind = name, kind
        self.transform = LogProbability(eps) if kind == "probability" else None
        self.label = f"reward function '{name}' ({_qualname(self.fn)})"

    @classmethod
    def from_config(cls, name: str, spec: Mapping[str, Any]) -> RewardFunction:
        """From a ``reward.<name>`` entry: ``function``, ``kind``, ``eps`` (other keys are the callback's)."""
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            raise ValueError(
                f"reward.{name} has unknown keys {unknown}; a reward function takes {sorted(SPEC_KEYS)}"
            )
        fn = spec["function"]
        if isinstance(fn, Mapping) and "_target_" in fn:
            from hydra.utils import instantiate  # noqa: PLC0415

            fn = instantiate(fn)
        return cls(name, fn, str(spec.get("kind") or "score"), float(spec.get("eps") or 1e-4))

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        columns: Mapping[str, Sequence[Any]],
        rows: Sequence[int] | None = None,
    ) -> Tensor:
        """Score a batch: (B,) float32 rewards, NaN where the function returned None.

        Args:
            prompts, completions, completion_ids: one per rollout (see the module docstring).
            columns: the dataset's other columns, one list of B values each.
            rows: each rollout's prompt id, for error messages (default: its index).

        Raises:
            RewardFunctionError: it raised, or returned NaN/inf, a non-number, a probability outside
                [0, 1], or not one value per rollout.
        """
        rows = list(rows) if rows is not None else list(range(len(prompts)))
        B = len(prompts)

        def call(idx: Sequence[int]) -> Any:
            return self.fn(
                prompts=[prompts[i] for i in idx],
                completions=[completions[i] for i in idx],
                completion_ids=[list(completion_ids[i]) for i in idx],
                **{k: [v[i] for i in idx] for k, v in columns.items()},
            )

        try:
            out = call(range(B))
        except Exception as err:  # find the row: the same call on each rollout alone
            raise self._failing_row(call, B, completions, rows, err) from None
        if not isinstance(out, Sequence | Tensor) or isinstance(out, str) or len(out) != B:
            got = f"{len(out)} values" if hasattr(out, "__len__") else type(out).__name__
            raise RewardFunctionError(
                f"{self.label} returned {got} for a batch of {B} rollouts; it must return one float or "
                "None per completion"
            )
        values = []
        for i, v in enumerate(out.tolist() if isinstance(out, Tensor) else out):
            values.append(math.nan if v is None else self._check(v, i, rows[i], completions[i]))
        return torch.tensor(values, dtype=torch.float32)

    def _check(self, v: Any, i: int, row: int, completion: Any) -> float:
        where = f"on row {i} of the batch (prompt id {row}, completion {_short(completion)})"
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise RewardFunctionError(
                f"{self.label} returned {type(v).__name__} {where}; expected a float or None"
            )
        if not math.isfinite(v):
            raise RewardFunctionError(f"{self.label} returned {v} {where}; return None for 'not applicable'")
        if self.kind == "probability" and not 0.0 <= v <= 1.0:
            raise RewardFunctionError(
                f"{self.label} returned {v} {where}, but reward.{self.name}.kind=probability needs values in "
                "[0, 1]; use kind=logit or kind=score for other numbers"
            )
        return float(v)

    def _failing_row(self, call, B: int, completions, rows, err: Exception) -> RewardFunctionError:
        for i in range(B):
            try:
                call([i])
            except Exception as row_err:
                return RewardFunctionError(
                    f"{self.label} raised {type(row_err).__name__}: {_line(row_err)} on row {i} of the batch "
                    f"(prompt id {rows[i]}, completion {_short(completions[i])})"
                )
        return RewardFunctionError(
            f"{self.label} raised {type(err).__name__}: {_line(err)} on a batch of {B}"
        )

    def fingerprint(self) -> str:
        """What the r_ref cache keys this function on: its name, kind and bound arguments (a partial's, or
        an instance's attributes), not its code: clear the cache after editing the code."""
        fn = self.fn
        bound = (getattr(fn, "args", ()), getattr(fn, "keywords", {})) if hasattr(fn, "func") else None
        if bound is None and not isinstance(fn, type(_qualname)):
            bound = getattr(fn, "__dict__", None)
        return f"function:{_qualname(fn)}:{self.kind}:{bound!r}"

    def __repr__(self) -> str:
        return f"RewardFunction({self.name!r}, {_qualname(self.fn)}, kind={self.kind!r})"


def _qualname(fn: Any) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return f"{getattr(inner, '__module__', '?')}:{name}"


def _line(err: Exception) -> str:
    """An exception's message on one line (its first)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def _short(completion: Any, n: int = 40) -> str:
    text = completion[-1]["content"] if isinstance(completion, list) and completion else str(completion)
    return repr(text if len(text) <= n else text[:n] + "…")


def function_scores(
    functions: Mapping[str, RewardFunction],
    tokenizer: Any,
    records: Mapping[int, Any],
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_ids: Tensor,
    prompt_len: int,
) -> Tensor:
    """(B, F) raw rewards of the F reward functions on a batch of sequences; NaN where one returned None.

    Args:
        functions: name → :class:`RewardFunction`.
        tokenizer: decodes the responses (special tokens skipped).
        records: prompt id → the dataset's record (``prompt`` and ``meta``: its other columns), e.g.
            ``PromptDataModule.all_records`` by id.
        input_ids: (B, P + R) prompt (left padded) and response.
        attention_mask: (B, P + R); its response part marks the response tokens (up to the EOS).
        prompt_ids: (B,) the prompts' ids.
        prompt_len: P, where the responses start.
    """
    ids = prompt_ids.tolist()
    missing = sorted({i for i in ids if i not in records})
    if missing:
        raise KeyError(f"prompt ids {missing[:5]} have no dataset record for the reward functions")
    rows = [records[i] for i in ids]
    resp, mask = input_ids[:, prompt_len:].cpu(), attention_mask[:, prompt_len:].cpu().bool()
    completion_ids = [r[m].tolist() for r, m in zip(resp, mask)]
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    prompts = [r.prompt for r in rows]
    completions = [
        [{"role": "assistant", "content": t}] if isinstance(p, list) else t for p, t in zip(prompts, texts)
    ]  # conversational prompts get conversational completions, as in TRL
    keys = sorted({k for r in rows for k in r.meta})
    columns = {k: [r.meta.get(k) for r in rows] for k in keys}
    cols = [fn(prompts, completions, completion_ids, columns, ids) for fn in functions.values()]
    return torch.stack(cols, -1).to(input_ids.device)  # (B, F)
