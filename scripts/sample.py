"""Sample a model folder's answers to a prompt file, exactly as PPO rollouts do (chat template, pinned
sampling, the same EOS ids), and print them with the mean response length.

    python scripts/sample.py MODEL_DIR PROMPTS.jsonl [--n 3] [--max-new-tokens 32] [--temperature 1.0]
        [--greedy] [--chat-template auto|true|false] [--seed 0] [--json OUT.json] [--generation hf|vllm]
        [--samples 1] [--max-words N] [--reward-model RM_DIR] [--quiet]

Run it on the model a run started from and on the run's ``model/`` folder to see what training changed.
``--samples K`` draws K answers per prompt (each row its own sampling stream); ``--max-words N`` also prints
the share of answers within N words (``rewards.functions.word_limit``'s pass rate) and their mean
pass probability; ``--reward-model`` scores every answer with a reward-model folder (a run's
``reward_model`` stage ``model/``) and prints the mean score; ``--quiet`` prints only the summary lines.
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
from lit_rlhf.models.scoring import reward_scores  # noqa: E402
from lit_rlhf.rewards.functions import word_limit  # noqa: E402
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
    samples: int = 1,
    reward_model: str | None = None,
) -> dict:
    """Answers of ``model_dir`` to the first ``n`` prompts of ``prompts_file``, ``samples`` answers each
    (prompt by prompt); returns a dict with ``responses`` (prompt, response, tokens, and ``reward`` when
    ``reward_model`` names a reward-model folder) and ``mean_tokens`` (and ``mean_reward``)."""
    spec = Pretrained(model_dir)
    tok = spec.load_tokenizer()
    model = spec.build("causal_lm", tok).eval()
    records = [r for r in load_prompts(prompts_file)[:n] for _ in range(samples)]
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
    out = {"model": model_dir, "responses": rows, "mean_tokens": sum(lengths) / max(len(lengths), 1)}
    if reward_model is not None:  # the same token ids the policy produced, as rollouts score them
        rm_spec = Pretrained(reward_model)
        rm_tok = rm_spec.load_tokenizer()
        if rm_tok.get_vocab() != tok.get_vocab():  # it would read the policy's ids as other words
            raise ValueError(f"--reward-model {reward_model}: its tokenizer differs from {model_dir}'s")
        rm = rm_spec.build("reward", rm_tok).eval()
        with torch.inference_mode():
            scores = reward_scores(rm, seq, torch.cat([mask, rmask.to(mask)], 1)).float().tolist()
        for row, s in zip(rows, scores):
            row["reward"] = s
        out["mean_reward"] = sum(scores) / len(scores)
    return out


def word_limit_summary(rows: list[dict], max_words: int) -> tuple[float, float]:
    """The share of answers within ``max_words`` words, and their mean ``word_limit`` probability."""
    p = word_limit([r["prompt"] for r in rows], [r["response"] for r in rows], max_words)
    return sum(x == 1.0 for x in p) / len(p), sum(p) / len(p)


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
    p.add_argument("--samples", type=int, default=1, help="answers per prompt")
    p.add_argument("--max-words", type=int, default=None, help="also report the share within N words")
    p.add_argument("--reward-model", default=None, help="score the answers with this reward-model folder")
    p.add_argument("--quiet", action="store_true", help="print only the summary lines")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error(f"--samples must be at least 1, got {args.samples}")
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
            args.samples,
            args.reward_model,
        )
    except (FileNotFoundError, DataFormatError, ValueError, ImportError) as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 2
    for row in [] if args.quiet else out["responses"]:
        print(f"> {row['prompt']}\n  {row['response']!r} ({row['tokens']} tokens)")
    rows = out["responses"]
    print(f"mean response length: {out['mean_tokens']:.1f} tokens over {len(rows)} answers")
    if "mean_reward" in out:
        print(
            f"mean reward-model score: {out['mean_reward']:.3f} over {len(rows)} answers "
            f"({args.reward_model})"
        )
    if args.max_words is not None:
        out["within_max_words"], out["word_limit_probability"] = word_limit_summary(rows, args.max_words)
        print(
            f"within {args.max_words} words: {out['within_max_words']:.1%} of {len(rows)} answers "
            f"(mean word_limit probability {out['word_limit_probability']:.3f})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
