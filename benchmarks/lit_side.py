"""lit_rlhf side: RewardModelModule / PPOModule / GRPOModule / RLOOModule driven by a Lightning Trainer, the
way users run them.

``python benchmarks/lit_side.py {rm,ppo,grpo,rloo} SIZE`` (lit_rlhf's venv; ``run.py`` calls it) prints one
``RESULT {json}`` line: throughput after the warm-up steps, the work done (optimizer steps, sequences,
tokens) and, for the policy tasks, a breakdown of the step (each timed phase is wrapped with
``perf_counter``; CPU ops are synchronous, so the wrappers measure the phase itself).

``LIT_RLHF_BENCH_GENERATION=vllm`` samples the policy tasks' rollouts with ``generation=vllm`` (the default
``hf``); ``benchmarks/generation.py`` alternates the two.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # benchmarks/ and the checkout's lit_rlhf
import lightning as L  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    Settings,
    StepClock,
    emit,
    group_result,
    group_step_flops,
    lit_precision,
    matmul_params,
    ppo_result,
    ppo_step_flops,
    runs_dir,
    setup_threads,
    step_seconds,
    train_flops,
)
from group import GROUP_TASKS, group_plan, lit_group_kwargs  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

from lit_rlhf.data.datamodules import PreferenceDataModule, PromptDataModule  # noqa: E402
from lit_rlhf.generation.hf import HFGeneration  # noqa: E402
from lit_rlhf.models import ValueModel  # noqa: E402
from lit_rlhf.models.factory import load_tokenizer, quiet_transformers  # noqa: E402
from lit_rlhf.tasks.grpo import GRPOModule  # noqa: E402
from lit_rlhf.tasks.ppo import PPOModule  # noqa: E402
from lit_rlhf.tasks.reward_model import RewardModelModule  # noqa: E402
from lit_rlhf.tasks.rloo import RLOOModule  # noqa: E402


class Meter(L.Callback):
    """Stamps the end of every training batch, counts optimizer steps and the tokens of each batch."""

    def __init__(self, count_batch_tokens: bool) -> None:
        self.clock, self.count_batch_tokens = StepClock(), count_batch_tokens
        self.opt_steps: dict[int, int] = defaultdict(int)
        self.tokens = self.positions = self.rows = 0

    def on_train_start(self, trainer, pl_module) -> None:
        for i, opt in enumerate(trainer.optimizers):
            opt = getattr(opt, "optimizer", opt)  # LightningOptimizer → torch optimizer
            opt.register_step_post_hook(lambda *_a, i=i: self.opt_steps.__setitem__(i, self.opt_steps[i] + 1))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.count_batch_tokens:
            self.tokens += int(batch["attention_mask"].sum())
            self.positions += batch["attention_mask"].numel()
            self.rows += len(batch["attention_mask"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.tick()


def trainer(callbacks: list, max_steps: int, s: Settings) -> L.Trainer:
    """A CPU Trainer with the shipped ``callbacks.cpu_tuning`` (what ``python train.py`` runs with)."""
    return L.Trainer(
        precision=lit_precision(s),
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=max_steps,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, cpu_tuning()],
    )


def cpu_tuning() -> L.Callback:
    """The shipped ``conf/callbacks/default.yaml: cpu_tuning`` (glibc keeps freed memory; eager attention
    under bf16), instantiated as ``python train.py`` does."""
    from hydra.utils import instantiate  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415

    return instantiate(OmegaConf.load(HERE.parent / "conf" / "callbacks" / "default.yaml").cpu_tuning)


def optimizer(s: Settings):
    """The shipped ``conf/optimizer/adamw.yaml`` (fused AdamW), as ``python train.py`` builds it for the
    side's ``trainer.precision``."""
    from hydra.utils import instantiate  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415

    import lit_rlhf  # noqa: F401, PLC0415  (its config resolvers)

    cfg = OmegaConf.create({"trainer": {"precision": lit_precision(s)}})
    cfg.optimizer = OmegaConf.load(HERE.parent / "conf" / "optimizer" / "adamw.yaml")
    return instantiate(cfg.optimizer)


def run_rm(s: Settings) -> dict:
    runs = runs_dir(s.size)
    tok = load_tokenizer(runs / "models" / "tokenizer")
    model = AutoModelForSequenceClassification.from_pretrained(runs / "models" / "reward", num_labels=1)
    dm = PreferenceDataModule(
        tok,
        path=str(runs / "data" / "pairs.jsonl"),
        val_fraction=0.0,
        seed=s.seed,
        batch_size=s.rm_batch_pairs,
        max_prompt_tokens=s.rm_max_prompt_tokens,
        max_length=s.rm_max_length,
    )
    module = RewardModelModule(model, optimizer(s), lr=s.lr)
    meter = Meter(count_batch_tokens=True)
    steps = s.rm_warmup_steps + s.rm_steps
    tr = trainer([meter], steps, s)
    L.seed_everything(s.seed, verbose=False)
    tr.fit(module, datamodule=dm)
    seconds = meter.clock.timed_seconds(s.rm_warmup_steps)
    n = matmul_params(model)
    timed_tokens = meter.tokens * s.rm_steps / steps  # tokens per step vary; use the mean
    return {
        "side": "lit_rlhf",
        "task": "rm",
        "seconds": seconds,
        "cpu_seconds": meter.clock.timed_cpu_seconds(s.rm_warmup_steps),
        "throughput": s.rm_steps * s.rm_batch_pairs / seconds,
        "step_s": step_seconds(meter.clock.stamps, s.rm_warmup_steps),
        "per_step": s.rm_batch_pairs,
        "unit": "pairs/s",
        "flops_per_s": train_flops(n, timed_tokens) / seconds,
        "work": {
            "optimizer_steps": meter.opt_steps[0],
            "pairs": meter.rows // 2,
            "sequences": meter.rows,
            "tokens": meter.tokens,
            "padded_positions": meter.positions,
        },
    }


OPTIMIZER = "update: optimizer"  # every optimizer.step of the step (PPO: policy and critic)
BACKWARD = "update: backward"  # every manual_backward of the step
CLIP = "update: gradient clipping"  # every clip_gradients of the step
REST = "update: loss maths + untimed rollout work"  # the rest of training_step


class Phases:
    """Accumulates seconds per named phase of the current step."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)

    def wrap(self, fn, name_of):
        @functools.wraps(fn)
        def inner(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            self.t[name_of(*a, **kw)] += time.perf_counter() - t0
            return out

        return inner


def instrument(module, cls: type) -> tuple[list[dict[str, float]], L.Callback, dict]:
    """Time the phases of a policy module's step and count its rollouts' work.

    Instance attributes shadow the methods (``PolicyModule.rollout`` and ``training_step`` call them through
    ``self``): generation, the policy / reference log-prob forwards (rollout under no-grad, update with
    grad), the critic's forwards (PPO), the reward forward, the whole ``training_step``; ``rollout`` counts
    prompts, samples per prompt, prompt and response tokens and generated positions.

    Returns:
        ``(per_step, callback, work)``: the phase seconds of each step (appended by ``callback`` at the end
        of every step) and the work counters.
    """
    ph = Phases()
    work = {"prompt_tokens": 0, "response_tokens": 0, "generated_positions": 0, "rollouts": 0, "prompts": 0}
    per_prompt: set[int] = set()

    def rollout_counting(batch, *a, **kw):
        ro = cls.rollout(module, batch, *a, **kw)
        P = ro.input_ids.shape[1] - ro.response_mask.shape[1]
        work["prompt_tokens"] += int(ro.attention_mask[:, :P].sum())
        work["response_tokens"] += int(ro.response_mask.sum())
        work["generated_positions"] += ro.response_mask.numel()
        work["rollouts"] += len(ro.response_mask)
        _, counts = torch.unique(ro.prompt_ids, return_counts=True)
        work["prompts"] += len(counts)
        per_prompt.update(counts.tolist())
        work["samples_per_prompt"] = sorted(per_prompt)
        return ro

    def lp_name(model, *a, **kw):
        if torch.is_grad_enabled():
            return "update: policy forward"
        return "rollout: policy log-prob forward" if model is module.actor else "rollout: reference forward"

    module.rollout = rollout_counting
    module.generate = ph.wrap(functools.partial(cls.generate, module), lambda *a, **kw: "rollout: generation")
    module._token_logprobs = ph.wrap(functools.partial(cls._token_logprobs, module), lp_name)
    if hasattr(cls, "_values"):  # PPO's critic
        module._values = ph.wrap(
            functools.partial(cls._values, module),
            lambda *a, **kw: "update: value forward" if torch.is_grad_enabled() else "rollout: value forward",
        )
    module.score = ph.wrap(functools.partial(cls.score, module), lambda *a, **kw: "rollout: reward forward")
    module.manual_backward = ph.wrap(module.manual_backward, lambda *a, **kw: BACKWARD)
    module.clip_gradients = ph.wrap(module.clip_gradients, lambda *a, **kw: CLIP)
    module.training_step = ph.wrap(
        functools.partial(cls.training_step, module), lambda *a, **kw: "training_step"
    )
    per_step: list[dict[str, float]] = []

    class StepPhases(L.Callback):
        def on_train_start(self, trainer: L.Trainer, *a) -> None:  # the optimizers exist from here on
            for opt in trainer.optimizers:
                opt.step = ph.wrap(opt.step, lambda *a, **kw: OPTIMIZER)

        def on_train_batch_end(self, *a, **kw) -> None:
            per_step.append(dict(ph.t))
            ph.t.clear()

    return per_step, StepPhases(), work


def breakdown(per_step: list[dict[str, float]], warmup: int, step_total: float) -> tuple[dict, float]:
    """Mean seconds per phase over the timed steps, and the seconds of the update (forwards + the rest).

    ``"update: loss maths + untimed rollout work"`` is what ``training_step`` spent outside the timed
    phases: the loss maths and the rollout's own work besides its forwards (rewards, transforms, advantages,
    the shared-prefix layouts); ``"Lightning loop + data"`` what the step spent outside ``training_step``.
    """
    timed = per_step[warmup:]
    keys = sorted({k for d in timed for k in d})
    mean = {k: sum(d.get(k, 0.0) for d in timed) / len(timed) for k in keys}
    rollout = sum(v for k, v in mean.items() if k.startswith("rollout"))
    timed_update = sum(v for k, v in mean.items() if k.startswith("update"))  # forwards, optimizer steps
    out = {k: v for k, v in mean.items() if k != "training_step"}
    out[REST] = mean["training_step"] - rollout - timed_update
    out["Lightning loop + data (outside training_step)"] = step_total - mean["training_step"]
    out["step total"] = step_total
    return out, out[REST] + timed_update


def engine(s: Settings):
    """The generation engine of the policy tasks: ``$LIT_RLHF_BENCH_GENERATION`` (``hf`` or ``vllm``); ``hf``
    prefills each prompt once per group unless ``shared_prefix=false``."""
    name = os.environ.get("LIT_RLHF_BENCH_GENERATION", "hf")
    if name == "vllm":
        from lit_rlhf.generation.vllm import VLLMGeneration  # noqa: PLC0415

        return VLLMGeneration(seed=s.seed, dtype="bfloat16", enforce_eager=s.vllm_enforce_eager != "false")
    if name != "hf":
        raise SystemExit(f"LIT_RLHF_BENCH_GENERATION must be hf or vllm, got {name!r}")
    # the prefill is shared with the forwards' setting: shared_prefix=false does the peer's work
    return HFGeneration(share_prefix=s.shared_prefix != "false")


def run_ppo(s: Settings) -> dict:
    models = runs_dir(s.size) / "models"
    P = prompt_tokens(s)
    tok = load_tokenizer(models / "tokenizer")
    actor = AutoModelForCausalLM.from_pretrained(models / "policy")
    ref = AutoModelForCausalLM.from_pretrained(models / "policy")
    # the critic from the reward folder, as TRL's value model (InstructGPT's initialisation)
    critic = ValueModel.from_reward_model(
        AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1)
    )
    rm = AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1)
    steps = s.ppo_warmup_steps + s.ppo_steps
    spp = s.ppo_samples_per_prompt
    if spp < 1 or s.ppo_batch_prompts % spp:
        raise SystemExit(f"ppo_samples_per_prompt={spp} must divide ppo_batch_prompts={s.ppo_batch_prompts}")
    dm = prompt_data(s, tok, s.ppo_batch_prompts // spp, steps)  # × spp samples = ppo_batch_prompts rollouts
    module = PPOModule(
        actor=actor,
        critic=critic,
        ref=ref,
        reward_models={"helpful": rm},
        tokenizer=tok,
        optimizer=optimizer(s),
        lr=s.lr,
        value_lr=s.lr,
        kl_coef=s.kl_coef,
        ppo_epochs=s.ppo_epochs,
        num_minibatches=s.ppo_minibatches,
        max_grad_norm=None,  # TRL's PPO loop does not clip: same work
        max_new_tokens=s.ppo_max_new_tokens,
        temperature=s.temperature,
        shared_prefix=s.shared_prefix,
        samples_per_prompt=spp,
        minibatch_by_group=s.minibatch_by_group == "true",
        old_logprobs_from_update=s.old_logprobs_from_update == "true",
        generation=engine(s),
    )
    per_step, step_phases, work = instrument(module, PPOModule)
    meter = Meter(count_batch_tokens=False)
    tr = trainer([meter, step_phases], steps, s)
    L.seed_everything(s.seed, verbose=False)
    tr.fit(module, datamodule=dm)
    if spp == 1:  # one sample per prompt: not part of PPO's work record (TRL's has neither)
        for k in ("prompts", "samples_per_prompt"):
            work.pop(k)
    seconds = meter.clock.timed_seconds(s.ppo_warmup_steps)
    step_total = seconds / s.ppo_steps
    phases, update_s = breakdown(per_step, s.ppo_warmup_steps, step_total)

    n_lm, n_cls = matmul_params(actor), matmul_params(rm)
    fl = ppo_step_flops(n_lm, n_cls, s.ppo_batch_prompts, P, s.ppo_max_new_tokens, s.ppo_epochs)
    steps = (meter.opt_steps[0], meter.opt_steps[1])  # policy and critic optimizer steps
    return ppo_result("lit_rlhf", s, meter, seconds, fl, step_total, update_s, phases, work, steps)


def group_module(s: Settings, task: str):
    """``GRPOModule`` / ``RLOOModule`` over ``prepare.py``'s models, conf/task/<task>.yaml's loss settings
    and ``s``'s switches: ``(module, its class, tokenizer)``."""
    models = runs_dir(s.size) / "models"
    tok = load_tokenizer(models / "tokenizer")
    cls = {"grpo": GRPOModule, "rloo": RLOOModule}[task]
    module = cls(
        actor=AutoModelForCausalLM.from_pretrained(models / "policy"),
        ref=AutoModelForCausalLM.from_pretrained(models / "policy"),
        reward_models={
            "helpful": AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1)
        },
        tokenizer=tok,
        optimizer=optimizer(s),
        generation=engine(s),
        **lit_group_kwargs(s, task),
    )
    return module, cls, tok


def run_group(s: Settings, task: str) -> dict:
    """GRPO or RLOO: ``GRPOModule`` / ``RLOOModule`` with conf/task/<task>.yaml's loss settings."""
    plan = group_plan(s, task)
    P = prompt_tokens(s)
    module, cls, tok = group_module(s, task)
    actor, rm = module.actor, module.reward_models["helpful"]
    per_step, step_phases, work = instrument(module, cls)
    meter = Meter(count_batch_tokens=False)
    tr = trainer([meter, step_phases], plan.iterations, s)
    L.seed_everything(s.seed, verbose=False)
    tr.fit(module, datamodule=prompt_data(s, tok, plan.prompts, plan.iterations))
    seconds = meter.clock.timed_seconds(plan.warmup_steps)
    phases, update_s = breakdown(per_step, plan.warmup_steps, seconds / plan.steps)
    fl = group_step_flops(
        matmul_params(actor), matmul_params(rm), plan.rollouts, P, plan.max_new_tokens, plan.epochs
    )
    return group_result(
        "lit_rlhf",
        task,
        meter,
        plan.warmup_steps,
        plan.rollouts,
        seconds,
        fl,
        update_s,
        phases,
        work,
        meter.opt_steps[0],
    )


def prompt_data(s: Settings, tok, batch_prompts: int, iterations: int) -> PromptDataModule:
    """The prompts of ``prepare.py``, ``batch_prompts`` per iteration, exactly ``iterations`` batches."""
    return PromptDataModule(
        tok,
        train_path=str(runs_dir(s.size) / "data" / "prompts.jsonl"),
        val_fraction=0.0,
        seed=s.seed,
        batch_size=batch_prompts,
        max_prompt_tokens=prompt_tokens(s),
        num_batches=iterations,
    )


def prompt_tokens(s: Settings) -> int:
    return json.loads((runs_dir(s.size) / "data" / "prompts_meta.json").read_text())["prompt_tokens"]


def main() -> None:
    task, s = Settings.from_argv(sys.argv[1:])
    s = s.override(os.environ.get("LIT_RLHF_BENCH_SET", "").split())  # ab.py's arms
    if s.logprobs == "autograd":
        autograd_logprobs()
    elif s.logprobs != "chunked":
        raise SystemExit(f"--set logprobs={s.logprobs!r}: expected chunked or autograd")
    quiet_transformers()
    setup_threads(s.threads)
    import warnings  # noqa: PLC0415

    warnings.filterwarnings("ignore")
    runners = {"rm": run_rm, "ppo": run_ppo} | {t: functools.partial(run_group, task=t) for t in GROUP_TASKS}
    result = runners[task](s)
    result["versions"] = {"torch": torch.__version__, "lightning": L.__version__, "transformers": _tf()}
    result["generation"] = os.environ.get("LIT_RLHF_BENCH_GENERATION", "hf")
    emit(result)


def autograd_logprobs() -> None:
    """``logprobs=autograd``: token log-probs as the release before computed them (``logprobs.autograd``:
    an fp32 copy of the logits, a logsumexp per row, autograd's backward), for ab.py's arms."""
    from logprobs import autograd  # noqa: PLC0415

    from lit_rlhf.rlhf.logprobs import SelectiveLogSoftmax  # noqa: PLC0415

    SelectiveLogSoftmax.apply = staticmethod(autograd)


def _tf() -> str:
    import transformers  # noqa: PLC0415

    return transformers.__version__


if __name__ == "__main__":
    main()
