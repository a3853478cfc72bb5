"""A model card (``README.md`` with Hub metadata) for each saved model folder.

The card says what the folder holds (SFT policy, reward model, PPO policy), what it started from and was
trained on, the command that made it, its headline metrics, the versions used and how to load it. The
YAML front matter is written by ``huggingface_hub`` (:class:`~huggingface_hub.ModelCardData`) so the Hub
and :meth:`ModelCard.load <huggingface_hub.ModelCard.load>` read it.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from huggingface_hub import ModelCard, ModelCardData

from lit_rlhf.run.summary import format_estimate

Kind = Literal["policy", "reward_model", "sft"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name; a local path is not a Hub id
KINDS: dict[str, dict[str, str]] = {
    "sft": {
        "title": "SFT policy",
        "what": "a causal language model fine-tuned on demonstrations (supervised fine-tuning, `task=sft`); "
        "the starting policy and reference of RLHF",
        "auto": "AutoModelForCausalLM",
        "pipeline_tag": "text-generation",
        "tags": "sft,text-generation",
    },
    "reward_model": {
        "title": "reward model",
        "what": "a Bradley–Terry reward model (`task=reward_model`): a causal-LM backbone with a scalar head "
        "(`num_labels=1`) read at the last non-padding token; a higher score means a preferred response",
        "auto": "AutoModelForSequenceClassification",
        "pipeline_tag": "text-classification",
        "tags": "reward-model",
    },
    "policy": {
        "title": "RLHF policy",
        "what": "a causal language model trained with PPO against reward models (`task=ppo`), with a KL "
        "penalty to its SFT reference",
        "auto": "AutoModelForCausalLM",
        "pipeline_tag": "text-generation",
        "tags": "ppo,text-generation",
    },
}


def version(package: str) -> str:
    """The installed version of ``package``, or ``unknown``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def card_data(kind: Kind, base_model: str) -> ModelCardData:
    """Hub metadata: ``library_name: transformers``, tags, pipeline tag, and ``base_model`` if it is a Hub id.

    A local folder is not a valid ``base_model`` on the Hub (a push would reject the card), so it is only
    named in the card's text.
    """
    spec = KINDS[kind]
    return ModelCardData(
        library_name="transformers",
        tags=["lit_rlhf", "rlhf", *spec["tags"].split(",")],
        pipeline_tag=spec["pipeline_tag"],
        base_model=base_model if HUB_ID.match(base_model) else None,
    )


def _load_snippet(kind: Kind, folder: Path) -> str:
    auto = KINDS[kind]["auto"]
    lines = [
        "```python",
        f"from transformers import AutoTokenizer, {auto}",
        "",
        f'path = "{folder}"  # this folder (or its Hub id once pushed)',
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        f"model = {auto}.from_pretrained(path)",
    ]
    if kind == "reward_model":
        lines += [
            'text = "a prompt" + " a response" + tokenizer.eos_token  # scored at its last token',
            'score = model(**tokenizer([text], return_tensors="pt")).logits[:, 0]  # (B,) rewards',
            "# tokenised exactly as in training (prompt and response apart, + eos):",
            "# from lit_rlhf.models.scoring import score_texts",
            "# score = score_texts(model, tokenizer, prompts, responses)",
        ]
    else:
        lines += [
            'batch = tokenizer(["a prompt"], return_tensors="pt")',
            "out = model.generate(**batch, max_new_tokens=32, do_sample=True)",
        ]
    return "\n".join([*lines, "```"])


def write_model_card(
    folder: str | Path,
    kind: Kind,
    base_model: str,
    data: Sequence[str],
    overrides: Sequence[str],
    metrics: Mapping[str, float],
    errors: Mapping[str, float] | None = None,
) -> Path:
    """Write ``folder/README.md``: Hub front matter, then what it is, base model, data, config, metrics,
    versions and how to load it.

    Args:
        folder: The saved model folder (``save_pretrained`` output).
        kind: ``sft``, ``reward_model`` or ``policy`` (PPO).
        base_model: What training started from: a Hub id, a local folder or a description.
        data: The data files (or a description of the embedded world) it was trained on.
        overrides: The command line's Hydra overrides (``HydraConfig.get().overrides.task``).
        metrics: Headline metric name → value.
        errors: Optional standard errors of some metrics (shown as ``± s.e.``).

    Returns:
        The card's path.
    """
    if kind not in KINDS:
        raise ValueError(f"model card kind must be one of {sorted(KINDS)}, got {kind!r}")
    folder = Path(folder)
    spec, errors = KINDS[kind], errors or {}
    command = shlex.join(["python", "train.py", *overrides])
    rows = [f"| `{k}` | {format_estimate(v, errors.get(k))} |" for k, v in metrics.items()]
    body = [
        f"# {folder.name}: lit_rlhf {spec['title']}",
        "",
        "## What it is",
        "",
        f"This folder holds {spec['what']}. It was trained with lit_rlhf, a Lightning + Hydra RLHF trainer "
        "reproducing *Transforming and Combining Rewards for Aligning Large Language Models* "
        "(Wang et al., 2024).",
        "",
        "## Base model",
        "",
        f"`{base_model}`",
        "",
        "## Data",
        "",
        *([f"- `{d}`" for d in data] or ["- (not recorded)"]),
        "",
        "## Configuration",
        "",
        "The Hydra overrides of the command that made it (the rest is `conf/`'s defaults):",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Metrics",
        "",
        *(["| metric | value |", "| --- | --- |", *rows] if rows else ["(none recorded)"]),
        "",
        "## Versions",
        "",
        f"lit_rlhf {version('lit_rlhf')}, torch {version('torch')}, transformers {version('transformers')}",
        "",
        "## How to load",
        "",
        _load_snippet(kind, folder),
    ]
    card = ModelCard(f"---\n{card_data(kind, base_model).to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
    path = folder / "README.md"
    card.save(path)
    return path
