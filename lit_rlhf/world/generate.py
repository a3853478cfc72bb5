"""Generate the embedded preference world on disk: prompts, demonstrations, preference pairs, tokenizer.

``build_world(out_dir, seed)`` is deterministic (same files byte for byte for the same parameters),
idempotent (a finished world with the same parameters is returned untouched) and safe: files are
written into a temporary sibling folder that is renamed into place at the end, under a file lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from lit_rlhf.world.gold import GOLD_FNS, bayes_ceiling, bt_probability
from lit_rlhf.world.responses import (
    contrast_harmless,
    contrast_helpful,
    sample_response,
    sample_synthetic,
)
from lit_rlhf.world.tokenizer import save_tokenizer
from lit_rlhf.world.vocab import ASPECT_NAMES, CLOSERS, OPENERS, TOPIC_NAMES, prompt_groups, vocabulary

WORLD_VERSION = 2  # bump when generation changes, so stale worlds are refused rather than reused
PROPERTIES = ("helpful", "harmless")
# Share of each pair kind per property: two demonstrations, two synthetic in-cap responses, and a
# contrast (the same response with its topic/aspect words moved, or one harmful/rude/safety word edited).
PAIR_MIX = {"helpful": (0.30, 0.20, 0.50), "harmless": (0.40, 0.20, 0.40)}
CONTRASTS: dict[str, Callable[[str, str, random.Random], str | None]] = {
    "helpful": contrast_helpful,
    "harmless": contrast_harmless,
}


@dataclass(frozen=True)
class WorldFiles:
    """Paths of a generated world (all JSONL files are one JSON object per line)."""

    root: Path
    tokenizer: Path  # folder loadable with AutoTokenizer.from_pretrained
    sft_train: Path  # {"prompt", "response"} demonstrations on train prompts
    sft_val: Path  # {"prompt", "response"} demonstrations on val prompts
    prompts_train: Path  # {"prompt", "id", "difficulty", "risky"}
    prompts_val: Path
    prompts_test: Path
    preference: dict[str, Path]  # "helpful"/"harmless" -> {"prompt", "chosen", "rejected"} on train prompts

    @property
    def meta(self) -> Path:
        """``world.json``: parameters, file names and statistics of the world."""
        return self.root / "world.json"

    @classmethod
    def at(cls, root: str | Path) -> WorldFiles:
        """The file layout of a world rooted at ``root`` (whether or not it exists yet)."""
        root = Path(root)
        return cls(
            root=root,
            tokenizer=root / "tokenizer",
            sft_train=root / "sft_train.jsonl",
            sft_val=root / "sft_val.jsonl",
            prompts_train=root / "prompts_train.jsonl",
            prompts_val=root / "prompts_val.jsonl",
            prompts_test=root / "prompts_test.jsonl",
            preference={p: root / f"pairs_{p}.jsonl" for p in PROPERTIES},
        )


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write rows as sorted-key JSON lines; returns the number of rows."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def make_prompts(rng: random.Random, val_per_topic: int, test_per_topic: int) -> dict[str, list[dict]]:
    """Every (topic, ordered pair of aspects) once, with a random opener and closer, split per topic.

    Returns:
        ``{"train", "val", "test"} -> rows`` sorted by id; 16 x 56 = 896 prompts in all.
    """
    pairs = [(a, b) for a in range(len(ASPECT_NAMES)) for b in range(len(ASPECT_NAMES)) if a != b]
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for t, topic in enumerate(TOPIC_NAMES):
        rows = []
        for j, (a, b) in enumerate(pairs):
            words = [rng.choice(OPENERS), topic, ASPECT_NAMES[a], ASPECT_NAMES[b], rng.choice(CLOSERS)]
            prompt = " ".join(words)
            rows.append({"prompt": prompt, "id": t * len(pairs) + j, **prompt_groups(prompt)})
        rng.shuffle(rows)
        splits["val"] += rows[:val_per_topic]
        splits["test"] += rows[val_per_topic : val_per_topic + test_per_topic]
        splits["train"] += rows[val_per_topic + test_per_topic :]
    return {k: sorted(v, key=lambda r: r["id"]) for k, v in splits.items()}


def make_sft(prompts: list[str], n: int, rng: random.Random) -> list[dict]:
    """``n`` demonstrations, cycling over the prompts so each gets the same number (± 1)."""
    order = [prompts[i % len(prompts)] for i in range(n)]
    rng.shuffle(order)
    return [{"prompt": p, "response": sample_response(p, rng)} for p in order]


def make_pairs(prompts: list[str], n: int, prop: str, label_scale: float, rng: random.Random) -> list[dict]:
    """``n`` preference pairs for one property, labels drawn from sigma(s * (g(a) - g(b))).

    Kinds (shares in ``PAIR_MIX``): two demonstrations; two synthetic in-cap responses (uniform
    feature counts); a contrast of one response with an edited copy of itself.
    """
    gold, contrast = GOLD_FNS[prop], CONTRASTS[prop]
    p_sft, p_syn, _ = PAIR_MIX[prop]
    rows = []
    while len(rows) < n:
        prompt = rng.choice(prompts)
        u = rng.random()
        if u < p_sft:
            a, b = sample_response(prompt, rng), sample_response(prompt, rng)
        elif u < p_sft + p_syn:
            a, b = sample_synthetic(prompt, rng), sample_synthetic(prompt, rng)
        else:
            sampler = sample_response if rng.random() < 0.5 else sample_synthetic
            a = sampler(prompt, rng)
            b = contrast(prompt, a, rng)
            if b is not None and rng.random() < 0.5:
                a, b = b, a
        if b is None or a == b or not a.strip() or not b.strip():  # an empty response is no answer
            continue
        p = bt_probability(gold(prompt, a), gold(prompt, b), label_scale)
        chosen, rejected = (a, b) if rng.random() < p else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def _generate(root: Path, params: dict) -> None:
    """Write a whole world into ``root`` (an empty folder)."""
    rng = random.Random(params["seed"])
    prompts = make_prompts(rng, params["val_per_topic"], params["test_per_topic"])
    files = WorldFiles.at(root)
    for split, path in (
        ("train", files.prompts_train),
        ("val", files.prompts_val),
        ("test", files.prompts_test),
    ):
        _write_jsonl(path, prompts[split])
    train = [r["prompt"] for r in prompts["train"]]
    val = [r["prompt"] for r in prompts["val"]]
    sft = make_sft(train, params["n_sft_train"], rng)
    _write_jsonl(files.sft_train, sft)
    _write_jsonl(files.sft_val, make_sft(val, params["n_sft_val"], rng))
    ceilings = {}
    for prop in PROPERTIES:
        _write_jsonl(
            files.preference[prop], make_pairs(train, params["n_pairs"], prop, params["label_scale"], rng)
        )
        ceilings[prop] = round(bayes_ceiling(files.preference[prop], prop, params["label_scale"]), 6)
    save_tokenizer(files.tokenizer)
    by_group = {
        d: [
            GOLD_FNS["helpful"](r["prompt"], r["response"])
            for r in sft
            if prompt_groups(r["prompt"])["difficulty"] == d
        ]
        for d in ("easy", "hard")
    }
    meta = {
        "params": params,
        "label_scale": params["label_scale"],
        "files": {k: str(v.relative_to(root)) for k, v in vars(files).items() if isinstance(v, Path)}
        | {f"pairs_{p}": files.preference[p].name for p in PROPERTIES},
        "stats": {
            "vocab_size": len(vocabulary()),
            "n_prompts": {k: len(v) for k, v in prompts.items()},
            "bayes_ceiling": ceilings,
            "sft_gold_helpful_mean": {d: round(mean(v), 6) for d, v in by_group.items() if v},
        },
    }
    meta["files"].pop("root")
    (root / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _existing_params(out_dir: Path, params: dict) -> bool:
    """True if ``out_dir`` holds a finished world with ``params``; raise if it holds another world."""
    meta = out_dir / "world.json"
    if not meta.exists():
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ValueError(
                f"{out_dir} exists, is not empty and has no world.json; refusing to overwrite it"
            )
        return False
    old = json.loads(meta.read_text(encoding="utf-8")).get("params", {})
    for key in sorted(set(old) | set(params)):
        if old.get(key) != params.get(key):
            raise ValueError(
                f"{out_dir} holds a world built with {key}={old.get(key)!r}, not {params.get(key)!r}; "
                "use another out_dir or delete it"
            )
    return True


def build_world(
    out_dir: str | Path,
    seed: int = 0,
    *,
    n_sft_train: int = 32_000,
    n_sft_val: int = 2_048,
    n_pairs: int = 20_000,
    label_scale: float = 3.0,
    val_per_topic: int = 4,
    test_per_topic: int = 4,
) -> WorldFiles:
    """Generate the world into ``out_dir`` unless it is already there; return its file paths.

    Args:
        out_dir: folder of the world (created; its parent must be writable).
        seed: seed of every random choice; same seed and sizes give byte-identical files.
        n_sft_train: demonstrations on train prompts (``sft_train.jsonl``).
        n_sft_val: demonstrations on val prompts (``sft_val.jsonl``).
        n_pairs: preference pairs per property, on train prompts.
        label_scale: ``s`` in the label law P(a > b) = sigma(s * (g(a) - g(b))).
        val_per_topic: held-out val prompts per topic (of 56).
        test_per_topic: held-out test prompts per topic (of 56).

    Raises:
        ValueError: if ``out_dir`` holds a world built with other parameters (the message names the
            differing key), or is a non-empty folder without ``world.json``.
    """
    if val_per_topic + test_per_topic >= 56 or min(val_per_topic, test_per_topic) < 1:
        raise ValueError(
            f"need 1 <= val_per_topic, test_per_topic and a sum < 56, got {val_per_topic}, {test_per_topic}"
        )
    if min(n_sft_train, n_sft_val, n_pairs) < 1 or label_scale <= 0:
        raise ValueError("n_sft_train, n_sft_val, n_pairs must be >= 1 and label_scale > 0")
    out_dir = Path(out_dir).resolve()
    params = {
        "version": WORLD_VERSION,
        "seed": seed,
        "n_sft_train": n_sft_train,
        "n_sft_val": n_sft_val,
        "n_pairs": n_pairs,
        "label_scale": float(label_scale),
        "val_per_topic": val_per_topic,
        "test_per_topic": test_per_topic,
    }
    files = WorldFiles.at(out_dir)
    if _existing_params(out_dir, params):
        return files
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _existing_params(out_dir, params):  # another process finished it while we waited
            return files
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
        try:
            _generate(tmp, params)
            os.chmod(tmp, 0o755)
            if out_dir.exists():
                out_dir.rmdir()  # empty (checked above)
            os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return files
