"""Sampling whose randomness belongs to each row, not to the batch: the same rollouts however prompts are
sharded over processes.

``model.generate(do_sample=True)`` draws every row's token from one ``torch.multinomial`` over the batch, so
a row's sample depends on which other rows share its batch and on the process's random stream: DDP over 2
ranks × 8 prompts and one process × 16 prompts sample different responses to the same prompts. Here each row
has its own ``torch.Generator``, seeded from a key of the caller's choice (the run seed, the iteration and
the row's index in the GLOBAL batch for rollouts; the prompt id for evaluation), and a token is drawn with
the Gumbel-max trick (Gumbel, 1954; Maddison et al., 2014):

    argmax_v (z_v / T + g_v),  g_v = −log(−log u_v),  u_v ~ U(0, 1) i.i.d.

is distributed exactly as softmax(z / T), the distribution PPO's log-probs are taken under. The
:class:`GumbelMax` logits processor returns ``z / T + g``, and transformers' greedy decoding (its argmax)
picks the token, KV cache and stopping criteria unchanged. Row i's t-th token uses the t-th draw of row i's
generator: another batch composition, padding or process cannot change it (up to the floating-point
rounding of the logits themselves, which almost never moves an argmax).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 (Steele et al., 2014): a bijective 64-bit mixer, for well-spread seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def row_seeds(key: Sequence[int], rows: Iterable[int]) -> Tensor:
    """Seeds ``(B,)`` int64 of the rows ``rows`` under ``key``: a pure function of ``(key, row)``.

    Args:
        key: integers that name the draw (e.g. ``(seed, iteration)``); any length.
        rows: one integer per row (e.g. the row's index in the global batch, or a prompt id).

    Returns:
        ``(B,)`` non-negative int64 seeds; different keys or rows give unrelated seeds.
    """
    base = 0
    for k in key:
        base = _splitmix64(base ^ (int(k) & _MASK64))
    return torch.tensor([_splitmix64(base ^ (int(r) & _MASK64)) >> 1 for r in rows], dtype=torch.long)


class GumbelMax(LogitsProcessor):
    """Scores ``z / T + g`` with Gumbel noise ``g`` from one generator per row: their argmax is a sample of
    softmax(z / T).

    Args:
        temperature: the sampling temperature T (> 0).
        seeds: ``(B,)`` one seed per row of the batch ``generate`` is called on.
        device: where the noise is drawn (the scores' device).
    """

    def __init__(self, temperature: float, seeds: Tensor, device: torch.device | str = "cpu") -> None:
        if temperature <= 0:
            raise ValueError(f"task.module.temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds.tolist()]

    def noise(self, vocab: int, device: torch.device) -> Tensor:
        """The next ``(B, V)`` Gumbel draws (each row's generator advances by one step)."""
        tiny = torch.finfo(torch.float64).tiny  # u > 0: the noise stays finite
        u = torch.stack(
            [torch.rand(vocab, generator=g, device=device, dtype=torch.float64) for g in self.generators]
        )  # (B, V)
        return -torch.log(-torch.log(u.clamp_min(tiny)))  # (B, V) float64

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"GumbelMax has {len(self.generators)} row seeds for {scores.shape[0]} rows")
        g = self.noise(scores.shape[-1], scores.device)  # (B, V)
        return scores / self.temperature + g.to(scores.dtype)  # (B, V)


def gumbel_decoding(
    config: GenerationConfig, seeds: Tensor, device: torch.device | str = "cpu"
) -> tuple[GenerationConfig, LogitsProcessorList]:
    """The greedy-decoding config and the :class:`GumbelMax` processor that sample ``config``'s distribution
    (softmax(logits / ``config.temperature``), nothing truncated) with per-row randomness.

    Returns:
        ``(greedy, processors)`` for ``model.generate(..., generation_config=greedy,
        logits_processor=processors)``: ``greedy`` is ``config`` with ``do_sample=False`` and no sampling
        fields, so transformers adds no processor of its own and takes the argmax of ours.
    """
    greedy = copy.deepcopy(config)
    greedy.do_sample = False
    greedy.temperature = greedy.top_k = greedy.top_p = greedy.typical_p = greedy.min_p = None
    return greedy, LogitsProcessorList([GumbelMax(config.temperature or 1.0, seeds, device)])
