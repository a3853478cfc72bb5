"""lit_rlhf without Hydra: build the LightningModules, datamodules and callbacks in Python and call
``L.Trainer(...).fit(...)`` — SFT, a Bradley–Terry reward model, then PPO and GRPO for a few iterations on
the embedded synthetic world, with the paper's ``u = log σ(r − r_ref)`` per reward summed (the AND). GRPO
adds a reward function (the rule "answers in at most 6 words", as a probability) beside the reward model.

    python examples/python_api.py [OUT_DIR]   # ~30 s on 2 CPU cores: a tiny world and 1-layer models

Everything here is what ``python train.py`` wires from ``conf/`` (``lit_rlhf/run/pipeline.py``).
"""

from __future__ import annotations

import copy
import sys
import tempfile
from functools import partial
from pathlib import Path

import lightning as L
import torch

from lit_rlhf import (
    GoldEvalCallback,
    GRPOModule,
    LogSigmoid,
    PPOModule,
    PreferenceDataModule,
    PromptDataModule,
    RewardFunction,
    RewardModelModule,
    RewardTransformCallback,
    SFTDataModule,
    SFTModule,
    Sum,
    TinyGPT2,
    ValueModel,
    build_world,
    load_tokenizer,
    word_limit,
)

Adam = partial(torch.optim.AdamW, betas=(0.9, 0.95))  # the optimizer, completed by each module


def trainer(out: Path, **kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out,
        **kw,
    )


def main(out: Path, iterations: int = 3) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    world = build_world(out / "world", seed=0, n_sft_train=2000, n_sft_val=128, n_pairs=1000)
    tok = load_tokenizer(world.tokenizer)
    net = TinyGPT2(n_layer=1, n_embd=64, n_head=2)

    # 1. SFT policy on demonstrations
    policy = net.build("causal_lm", tok)
    sft_data = SFTDataModule(tok, train_path=str(world.sft_train), val_path=str(world.sft_val), batch_size=64)
    trainer(out, max_epochs=1).fit(SFTModule(policy, optimizer=Adam, lr=3e-3), datamodule=sft_data)

    # 2. reward model of helpfulness: the SFT backbone and a new scalar head, trained on preference pairs
    rm = net.build("reward", tok)
    rm.transformer.load_state_dict(policy.transformer.state_dict())
    pairs = PreferenceDataModule(tok, path=str(world.preference["helpful"]), batch_size=64)
    trainer(out, max_epochs=1).fit(RewardModelModule(rm, optimizer=Adam, lr=3e-3), datamodule=pairs)

    # 3. PPO then GRPO against it: log σ(r − r_ref) per reward, summed over rewards (the AND)
    results = {}
    rule = RewardFunction("short", partial(word_limit, max_words=6), kind="probability")
    for name, algo, extra in [
        ("ppo", PPOModule, {"critic": ValueModel(copy.deepcopy(policy.transformer))}),
        ("grpo", GRPOModule, {"samples_per_prompt": 4, "reward_functions": {"short": rule}}),
    ]:
        module = algo(
            actor=copy.deepcopy(policy),
            ref=copy.deepcopy(policy),
            reward_models={"helpful": rm},
            tokenizer=tok,
            optimizer=Adam,
            lr=1e-4,
            max_new_tokens=12,
            eval_samples_per_prompt=2,
            **extra,
        )
        prompts = PromptDataModule(
            tok,
            train_path=str(world.prompts_train),
            val_path=str(world.prompts_val),
            batch_size=8,
            val_batch_size=32,
            num_batches=iterations,
        )
        callbacks = [
            RewardTransformCallback(
                transform=LogSigmoid(), aggregator=Sum(), n_samples=2, cache_dir=str(out / "reference")
            ),
            GoldEvalCallback(write_jsonl=False),  # win rates on the world's exact gold rewards
        ]
        fit = trainer(
            out,
            max_epochs=1,
            val_check_interval=iterations,
            callbacks=callbacks,
            use_distributed_sampler=False,
        )
        fit.fit(module, datamodule=prompts)
        results[name] = {k: float(v) for k, v in fit.callback_metrics.items() if "/" in k}
        moved = [not torch.equal(a, b) for a, b in zip(module.actor.parameters(), policy.parameters())]
        results[name]["policy_moved"] = float(any(moved))  # the update changed the weights
        print(
            name, {k: round(v, 3) for k, v in results[name].items() if k.startswith(("reward/", "gold/win"))}
        )
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
