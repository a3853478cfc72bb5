"""Sample a model folder's answers to a prompt file, exactly as PPO rollouts do (chat template, pinned
sampling, the same EOS ids), and print them with the mean response length.

    python scripts/sample.py MODEL_DIR PROMPTS.jsonl [--n 3] [--max-new-tokens 32] [--temperature 1.0]
        [--greedy] [--chat-template auto|true|false] [--seed 0] [--json OUT.json] [--generation hf|vllm]

Run it on the model a run started from and on the run's ``model/`` folder to see what training changed.
``--generation vllm`` samples with vLLM instead of transformers (docs/generation.md), each row from its own
seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_rlhf.data.chat import check_chat_template, prompt_text, render_prompts  # noqa: E402
from lit_rlhf.data.jsonl import DataFormatError, load_prompts  # noqa: E402
from lit_rlhf.data.tokenize import pad_batch  # noqa: E402
from lit_rlhf.generation.hf import HFGeneration  # noqa: E402
from lit_rlhf.models import Pretrained, quiet_transformers  # noqa: E402
from lit_rlhf.rollout.decoding import row_seeds  # noqa: E402
from lit_rlhf.rollout.rollout import eos_token_ids, sampling_config  # noqa: E402


def sample(
    model_dir: str,
    prompts_file: str,
    n: int = 3,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    greedy: bool = False,
    chat_template: str = "auto",
    seed: int = 0,
    generation: str = "hf",
) -> dict:
    """Answers of ``model_dir`` to the first ``n`` prompts of ``prompts_file``; returns a dict with
    ``responses`` (prompt, response, tokens) and ``mean_tokens``."""
    spec = Pretrained(model_dir)
    tok = spec.load_tokenizer()
    model = spec.build("causal_lm", tok).eval()
    records = load_prompts(prompts_file)[:n]
    mode = {"true": True, "false": False}.get(str(chat_template).lower(), chat_template)
    rendered = render_prompts(tok, [r.prompt for r in records], check_chat_template(mode))
    ids, mask = pad_batch([r for r, _ in rendered], tok.pad_token_id, left=True)
    config = sampling_config(tok, eos_token_ids(tok, [model]), max_new_tokens, temperature)
    if greedy:
        config.do_sample = False
        config.temperature = None
    torch.manual_seed(seed)
    seeds = None
    if generation == "vllm":
        from lit_rlhf.generation.vllm import VLLMGeneration  # noqa: PLC0415  (vLLM only when asked for)

        engine = VLLMGeneration(seed=seed)
        engine.start(model)
        seeds = row_seeds((seed,), range(len(ids)))
    elif generation == "hf":
        engine = HFGeneration()
    else:
        raise ValueError(f"--generation must be hf or vllm, got {generation!r}")
    with torch.inference_mode():
        seq, rmask = engine.generate(model, ids, mask, config, tok.pad_token_id, seeds)[:2]
    P = ids.shape[1]
    texts = tok.batch_decode(seq[:, P:].masked_fill(rmask == 0, tok.pad_token_id), skip_special_tokens=True)
    lengths = rmask.sum(-1).tolist()
    rows = [
        {"prompt": prompt_text(r.prompt), "response": t.strip(), "tokens": int(k)}
        for r, t, k in zip(records, texts, lengths)
    ]
    return {"model": model_dir, "responses": rows, "mean_tokens": sum(lengths) / max(len(lengths), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("prompts")
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--chat-template", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--generation", default="hf", choices=["hf", "vllm"], help="the sampling engine")
    args = p.parse_args(argv)
    quiet_transformers()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        out = sample(
            args.model_dir,
            args.prompts,
            args.n,
            args.max_new_tokens,
            args.temperature,
            args.greedy,
            args.chat_template,
            args.seed,
            args.generation,
        )
    except (FileNotFoundError, DataFormatError, ValueError, ImportError) as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 2
    for row in out["responses"]:
        print(f"> {row['prompt']}\n  {row['response']!r} ({row['tokens']} tokens)")
    print(f"mean response length: {out['mean_tokens']:.1f} tokens over {len(out['responses'])} prompts")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
