"""TRL side of GRPO and RLOO: TRL 1.16's ``GRPOTrainer`` and ``RLOOTrainer``, as users run them.

``python benchmarks/trl_group.py {grpo,rloo} SIZE`` with the ``trl116`` venv prints one ``RESULT {json}``
line with the fields of ``lit_side.py``'s. Nothing here imports lit_rlhf.

Same model files, tokenizer, prompts, group size, lengths, β and clip ε as the lit_rlhf side, configured by
:func:`group.trl_group_config` (one generation of prompts × G completions per iteration, epochs ×
minibatches optimizer steps on it). The reward model is passed as TRL's reward function (a
``*ForSequenceClassification`` model; TRL scores the decoded ``prompt + completion`` text). Prompts get a
trailing space: TRL joins the two strings without one, and the word-level tokenizers here (unlike a BPE
one, whose completion tokens carry their leading space) would merge the last prompt word with the first
completion word into an unknown token.

The breakdown wraps the trainer's own methods (instance attributes shadow them): ``_generate_single_turn``
(sampling), ``_get_per_token_logps_and_entropies`` (policy and reference log-prob forwards at rollout time,
the policy forward of the update), ``_calculate_rewards`` (reward forward, with its re-tokenisation) and
``_generate_and_score_completions`` (the whole rollout, where the work is counted).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import trl  # noqa: E402
from common import group_result, group_step_flops, matmul_params, runs_dir  # noqa: E402
from datasets import Dataset  # noqa: E402
from group import GROUP_TASKS, group_plan, trl_group_config  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)
from trl_side import Meter, common_args, main, peer_attention  # noqa: E402


def run_group(s, out: str, task: str) -> dict:
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer  # noqa: PLC0415

    plan = group_plan(s, task)
    models = runs_dir(s.size) / "models"
    tok = AutoTokenizer.from_pretrained(models / "tokenizer")
    tok.padding_side = "left"  # TRL's generation pads prompts on the left (ours need no padding anyway)
    policy = AutoModelForCausalLM.from_pretrained(models / "policy")
    rm = AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1)
    peer_attention(policy, rm)  # TRL builds the reference with the policy's attn_implementation
    records = [
        json.loads(line) for line in (runs_dir(s.size) / "data" / "prompts.jsonl").read_text().splitlines()
    ]
    train = Dataset.from_dict(
        {"prompt": [r["prompt"] + " " for r in records], "id": [r["id"] for r in records]}
    )
    Config, Trainer = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[task]
    args = Config(**common_args(s, out), **trl_group_config(s, task))

    meter = Meter(every=plan.updates)  # one stamp per iteration: after its last optimizer step
    t: dict[str, float] = defaultdict(float)
    per_step: list[dict[str, float]] = []
    work = {"prompt_tokens": 0, "response_tokens": 0, "generated_positions": 0, "rollouts": 0, "prompts": 0}
    per_prompt: set[int] = set()
    mark = {"iteration_start": 0.0}

    class StepPhases(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            mark["iteration_start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % plan.updates:
                return
            now = time.perf_counter()
            per_step.append({**t, "_iteration_total": now - mark["iteration_start"]})
            t.clear()
            mark["iteration_start"] = now

    tr = Trainer(
        model=policy,
        reward_funcs=rm,
        args=args,
        train_dataset=train,
        processing_class=tok,
        reward_processing_classes=tok,
        callbacks=[meter, StepPhases()],
    )

    def timed(fn, name):
        @functools.wraps(fn)
        def inner(*a, **kw):
            t0 = time.perf_counter()
            result = fn(*a, **kw)
            t[name(*a, **kw) if callable(name) else name] += time.perf_counter() - t0
            return result

        return inner

    def logps_name(model, *a, **kw):
        if torch.is_grad_enabled():
            return "update: policy forward"
        return "rollout: reference forward" if model is tr.ref_model else "rollout: policy log-prob forward"

    orig_rollout = tr._generate_and_score_completions

    def rollout(inputs):
        batch = orig_rollout(inputs)
        counts = Counter(x["id"] for x in inputs)
        work["prompts"] += len(counts)
        work["rollouts"] += len(inputs)
        per_prompt.update(counts.values())
        work["samples_per_prompt"] = sorted(per_prompt)
        work["prompt_tokens"] += int(batch["prompt_mask"].sum())
        work["response_tokens"] += int(batch["completion_mask"].sum())  # up to and incl. the EOS
        work["generated_positions"] += batch["completion_mask"].numel()  # padded to the longest response
        return batch

    tr._generate_and_score_completions = timed(rollout, "_rollout_total")
    tr._generate_single_turn = timed(tr._generate_single_turn, "rollout: generation")
    tr._get_per_token_logps_and_entropies = timed(tr._get_per_token_logps_and_entropies, logps_name)
    tr._calculate_rewards = timed(tr._calculate_rewards, "rollout: reward forward (decode, re-tokenise)")
    tr.train()

    seconds = meter.clock.timed_seconds(plan.warmup_steps)
    timed_steps = per_step[plan.warmup_steps :]
    keys = sorted({k for d in timed_steps for k in d})
    mean = {k: sum(d.get(k, 0.0) for d in timed_steps) / len(timed_steps) for k in keys}
    phases = {k: v for k, v in mean.items() if k.startswith("rollout")}
    phases["rollout: tokenise, decode, advantages, logging (rest)"] = mean["_rollout_total"] - sum(
        phases.values()
    )
    update_s = seconds / plan.steps - mean["_rollout_total"]
    upd_fwd = phases["update: policy forward"] = mean.get("update: policy forward", 0.0)
    phases["update: backward + optimizer + loss maths + logging"] = update_s - upd_fwd
    phases["step total"] = seconds / plan.steps
    P = int(work["prompt_tokens"] / max(work["rollouts"], 1))
    fl = group_step_flops(
        matmul_params(policy), matmul_params(rm), plan.rollouts, P, plan.max_new_tokens, plan.epochs
    )
    side = f"trl {trl.__version__} {Trainer.__name__}"
    steps = meter.opt_steps
    return group_result(
        side, task, meter, plan.warmup_steps, plan.rollouts, seconds, fl, update_s, phases, work, steps
    )


if __name__ == "__main__":
    main({task: functools.partial(run_group, task=task) for task in GROUP_TASKS})
