"""TRL side: ``RewardTrainer`` (TRL 1.16) and ``trl.experimental.ppo.PPOTrainer`` (TRL 1.12); GRPO and RLOO
are in ``trl_group.py``.

``python benchmarks/trl_side.py {rm,ppo} SIZE`` with a peer venv (``benchmarks/setup_peers.sh``) prints one
``RESULT {json}`` line with the same fields as ``lit_side.py``. Nothing here imports lit_rlhf.

Same model files, tokenizer, batches and lengths as the lit_rlhf side (``runs/SIZE/``, written
by ``prepare.py``). The reward trainer reads the pairs lit_rlhf tokenised, in lit_rlhf's loader order, with a
sequential sampler: both sides see byte-identical batches.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from common import (  # noqa: E402
    Settings,
    StepClock,
    emit,
    matmul_params,
    ppo_result,
    ppo_step_flops,
    runs_dir,
    setup_threads,
    step_seconds,
    train_flops,
    trl_precision,
)
from datasets import Dataset  # noqa: E402
from torch.utils.data import SequentialSampler  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)


class Meter(TrainerCallback):
    """Stamps the end of every ``every``-th optimizer step (HF callbacks' ``on_step_end``): every step for
    the reward model and PPO (one HF step = one PPO iteration), the last update of each iteration for
    GRPO / RLOO. Counts optimizer steps."""

    def __init__(self, every: int = 1) -> None:
        self.clock, self.opt_steps, self._hooked, self.every = StepClock(), 0, False, every

    def hook(self, optimizer) -> None:
        if not self._hooked:
            opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper → torch optimizer
            opt.register_step_post_hook(lambda *_a: setattr(self, "opt_steps", self.opt_steps + 1))
            self._hooked = True

    def on_train_begin(self, args, state, control, optimizer=None, **kw):
        if optimizer is not None:
            self.hook(optimizer)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step % self.every == 0:
            self.clock.tick()


def peer_attention(*models) -> None:
    """``run.py --peer-cpu-tuning`` (``LIT_BENCH_PEER_ATTN``): give TRL's models lit_rlhf's bf16 CPU attention
    choice, to measure how much of a lead that choice is (never set in the default comparison)."""
    attn = os.environ.get("LIT_BENCH_PEER_ATTN")
    for m in models if attn else ():
        m.set_attn_implementation(attn)


def common_args(s: Settings, out: str) -> dict:
    return {
        "output_dir": out,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": s.seed,
        "learning_rate": s.lr,
        "lr_scheduler_type": "constant",
        "optim": "adamw_torch",
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,
        "weight_decay": 0.0,
        "dataloader_num_workers": 0,
        **trl_precision(s),
        # RewardConfig (like GRPOConfig) defaults to True: a second forward in every backward, which
        # lit_rlhf does not do (less memory, more work). Off, so both sides do the same work.
        "gradient_checkpointing": False,
    }


def run_rm(s: Settings, out: str) -> dict:
    from trl import RewardConfig, RewardTrainer  # noqa: PLC0415

    runs = runs_dir(s.size)
    tok = AutoTokenizer.from_pretrained(runs / "models" / "tokenizer")
    model = AutoModelForSequenceClassification.from_pretrained(runs / "models" / "reward", num_labels=1)
    peer_attention(model)
    rows = [json.loads(line) for line in (runs / "data" / "pairs_ids.jsonl").read_text().splitlines()]
    ds = Dataset.from_list(rows)
    count = {"tokens": 0, "positions": 0, "rows": 0}

    class Trainer(RewardTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, *a, **kw):
            if self.model.training:
                count["tokens"] += int(inputs["attention_mask"].sum())
                count["positions"] += inputs["attention_mask"].numel()
                count["rows"] += len(inputs["attention_mask"])
            return super().compute_loss(model, inputs, *a, **kw)

    steps = s.rm_warmup_steps + s.rm_steps
    args = RewardConfig(
        **common_args(s, out),
        per_device_train_batch_size=s.rm_batch_pairs,
        max_steps=steps,
        max_length=s.rm_max_length,
        max_grad_norm=0.0,  # lit_rlhf's run does not clip either
        logging_steps=10,
        dataset_num_proc=None,
    )
    meter = Meter()
    tr = Trainer(model=model, args=args, processing_class=tok, train_dataset=ds, callbacks=[meter])
    tr.train()
    seconds = meter.clock.timed_seconds(s.rm_warmup_steps)
    timed_tokens = count["tokens"] * s.rm_steps / steps
    return {
        "side": f"trl {trl.__version__} RewardTrainer",
        "task": "rm",
        "seconds": seconds,
        "cpu_seconds": meter.clock.timed_cpu_seconds(s.rm_warmup_steps),
        "throughput": s.rm_steps * s.rm_batch_pairs / seconds,
        "step_s": step_seconds(meter.clock.stamps, s.rm_warmup_steps),
        "per_step": s.rm_batch_pairs,
        "unit": "pairs/s",
        "flops_per_s": train_flops(matmul_params(model), timed_tokens) / seconds,
        "work": {
            "optimizer_steps": meter.opt_steps,
            "pairs": count["rows"] // 2,
            "sequences": count["rows"],
            "tokens": count["tokens"],
            "padded_positions": count["positions"],
        },
    }


def run_ppo(s: Settings, out: str) -> dict:
    from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: PLC0415
    from trl.experimental.ppo import ppo_trainer as ppo_mod  # noqa: PLC0415

    models = runs_dir(s.size) / "models"
    tok = AutoTokenizer.from_pretrained(models / "tokenizer")
    tok.padding_side = "left"  # TRL's PPO generates after left-padded queries (ours need no padding anyway)
    policy = AutoModelForCausalLM.from_pretrained(models / "policy")
    ref = AutoModelForCausalLM.from_pretrained(models / "policy")
    value = AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1)
    rm = AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1)
    peer_attention(policy, ref, value, rm)
    prompts = [
        json.loads(line)["prompt"]
        for line in (runs_dir(s.size) / "data" / "prompts.jsonl").read_text().splitlines()
    ]
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    train = Dataset.from_dict({"input_ids": ids})
    steps = s.ppo_warmup_steps + s.ppo_steps
    args = PPOConfig(
        **common_args(s, out),
        per_device_train_batch_size=s.ppo_batch_prompts,
        gradient_accumulation_steps=1,
        local_rollout_forward_batch_size=s.ppo_batch_prompts,
        num_mini_batches=s.ppo_minibatches,
        num_ppo_epochs=s.ppo_epochs,
        total_episodes=s.ppo_batch_prompts * steps,
        response_length=s.ppo_max_new_tokens,
        temperature=s.temperature,
        stop_token="eos",
        kl_coef=s.kl_coef,
        gamma=1.0,
        lam=0.95,
        num_sample_generations=0,
        missing_eos_penalty=None,
        logging_steps=10,
    )

    # breakdown: wrap the module-level helpers the PPO loop calls
    t: dict[str, float] = defaultdict(float)
    per_step: list[dict[str, float]] = []
    work = {"prompt_tokens": 0, "response_tokens": 0, "generated_positions": 0, "rollouts": 0}
    mark = {"step_start": None, "update_start": None}

    def timed(fn, name):
        @functools.wraps(fn)
        def inner(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            t[name(*a, **kw) if callable(name) else name] += time.perf_counter() - t0
            return out

        return inner

    orig_gen = ppo_mod.batch_generation

    def batch_generation(model, queries, bs, pad_token_id, generation_config):
        qr, logits = orig_gen(model, queries, bs, pad_token_id, generation_config)
        resp = qr[:, queries.shape[1] :]
        is_eos = resp == tok.eos_token_id
        R = resp.shape[1]
        first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), torch.full((len(resp),), R))
        work["prompt_tokens"] += int((queries != pad_token_id).sum())
        work["response_tokens"] += int((torch.arange(R)[None] <= first[:, None]).sum())  # up to and incl. EOS
        work["generated_positions"] += resp.numel()
        work["rollouts"] += len(resp)
        return qr, logits

    ppo_mod.batch_generation = timed(batch_generation, "rollout: generation (logits kept)")
    orig_fwd = ppo_mod.forward

    def forward(model, query_responses, pad_token_id):
        if torch.is_grad_enabled() and mark["update_start"] is None:
            mark["update_start"] = time.perf_counter()
        return orig_fwd(model, query_responses, pad_token_id)

    ppo_mod.forward = timed(
        forward,
        lambda model, *a: (
            "update: policy+value forward" if torch.is_grad_enabled() else "rollout: reference forward"
        ),
    )
    ppo_mod.get_reward = timed(ppo_mod.get_reward, "rollout: value + reward forwards")

    meter = Meter()

    class StepPhases(TrainerCallback):
        def on_step_end(self, *a, **kw):
            now = time.perf_counter()
            d = dict(t)
            if mark["step_start"] is not None and mark["update_start"] is not None:
                d["_rollout_total"] = mark["update_start"] - mark["step_start"]
                d["_update_total"] = now - mark["update_start"]
            per_step.append(d)
            t.clear()
            mark["step_start"], mark["update_start"] = now, None

        def on_train_begin(self, *a, **kw):
            mark["step_start"] = time.perf_counter()

    tr = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=ref,
        reward_model=rm,
        value_model=value,
        train_dataset=train,
        eval_dataset=train.select(range(s.ppo_batch_prompts)),
        callbacks=[meter, StepPhases()],
    )
    meter.hook(tr.optimizer)
    tr.train()
    seconds = meter.clock.timed_seconds(s.ppo_warmup_steps)
    timed_steps = per_step[s.ppo_warmup_steps :]
    keys = sorted({k for d in timed_steps for k in d})
    mean = {k: sum(d.get(k, 0.0) for d in timed_steps) / len(timed_steps) for k in keys}
    step_total = seconds / s.ppo_steps
    breakdown = {k: v for k, v in mean.items() if not k.startswith("_")}
    rollout_other = mean["_rollout_total"] - sum(v for k, v in breakdown.items() if k.startswith("rollout"))
    breakdown["rollout: log-softmax, masks, rewards, GAE (rest)"] = rollout_other
    breakdown["update: backward + optimizer + loss maths + logging"] = mean["_update_total"] - breakdown.get(
        "update: policy+value forward", 0.0
    )
    breakdown["step total"] = step_total
    P = len(ids[0])
    n_lm, n_cls = matmul_params(policy), matmul_params(rm)
    fl = ppo_step_flops(n_lm, n_cls, s.ppo_batch_prompts, P, s.ppo_max_new_tokens, s.ppo_epochs)
    side, steps = f"trl {trl.__version__} PPOTrainer", (meter.opt_steps, meter.opt_steps)  # one optimizer
    update_s = mean["_update_total"]
    return ppo_result(side, s, meter, seconds, fl, step_total, update_s, breakdown, work, steps)


def main(runners: dict | None = None) -> None:
    """``python trl_side.py TASK SIZE``; ``runners`` maps task → ``run(settings, output_dir)``."""
    runners = runners or {"rm": run_rm, "ppo": run_ppo}
    task, s = Settings.from_argv(sys.argv[1:])
    setup_threads(s.threads)
    import warnings  # noqa: PLC0415

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as out:
        result = runners[task](s, out)
    result["versions"] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }
    emit(result)


if __name__ == "__main__":
    main()
