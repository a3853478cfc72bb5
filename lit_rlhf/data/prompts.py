"""The prompt LightningDataModule of the policy tasks (PPO, GRPO, RLOO, REINFORCE++): rollout batches,
sharded over the ranks by the module itself, and held-out prompts for evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler

from lit_rlhf.data.batching import CycledBatchSampler, split_indices
from lit_rlhf.data.chat import ChatTemplate, prompt_text, truncate_left
from lit_rlhf.data.common import DM, check_common, loader, render
from lit_rlhf.data.jsonl import OnError, PromptRecord, load_prompts
from lit_rlhf.data.sources import DatasetOptions
from lit_rlhf.data.tokenize import PromptCollator, PromptItem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class PromptDataModule(L.LightningDataModule):
    """Prompts for PPO rollouts: any prompt-only, SFT or preference file (strings or conversations).

    Batches come from :class:`~lit_rlhf.data.tokenize.PromptCollator`: left-padded ``input_ids`` and
    ``attention_mask`` (B, T), ``prompt_ids`` (B,) and ``prompts`` (list[str], for display: a
    conversation's last user message). :attr:`all_items` holds the exact ids of every prompt.

    Args:
        tokenizer: The policy's tokenizer (pad and eos tokens must be set).
        train_path: A JSONL file or ``datasets`` source whose records have a prompt (deduplicated).
        val_path: Optional separate file of held-out prompts; if None, ``val_fraction`` of train.
            Records without an "id" get ids after the training ones, so ids never clash.
        val_fraction: Share of ``train_path`` held out when ``val_path`` is None (0: no validation).
        seed: Seed of the split and of the training shuffle.
        batch_size: Prompts per rollout batch of each process (incomplete last batch dropped). Under DDP
            the global batch is ``batch_size × world size``; this module shards it over the ranks
            itself (run the Trainer with ``use_distributed_sampler=False``), training and validation.
        val_batch_size: Prompts per evaluation batch (per process).
        max_prompt_tokens: Prompt tokens kept (from the end, and a leading BOS).
        num_batches: If set, the train loader yields exactly this many batches (one per PPO iteration),
            cycling through freshly shuffled passes over the prompts; None = one shuffled pass.
        num_workers: DataLoader workers.
        on_error: "raise" on a bad line, or "skip" bad lines with one warning.
        chat_template: ``"auto"``, ``True`` or ``False``: whether plain-string prompts go through the
            tokenizer's chat template (conversations always do); see :mod:`lit_rlhf.data.chat`.
        dataset: When a path is a ``datasets`` source (saved folder, parquet/arrow/JSON file, Hub id):
            ``split``, ``subset``, ``revision`` and ``columns`` (field → column, e.g. ``{"prompt":
            "question"}``); see :class:`~lit_rlhf.data.sources.DatasetOptions`. The ``data`` group's keys.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        train_path: str,
        val_path: str | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 32,
        val_batch_size: int = 64,
        max_prompt_tokens: int = 32,
        num_batches: int | None = None,
        num_workers: int = 0,
        on_error: OnError = "raise",
        chat_template: ChatTemplate = "auto",
        dataset: DatasetOptions | dict | None = None,
    ) -> None:
        super().__init__()
        self.chat_template = check_common(
            tokenizer, val_fraction, batch_size, max_prompt_tokens, num_workers, on_error, chat_template
        )
        if val_batch_size < 1:
            raise ValueError(f"{DM}.val_batch_size must be >= 1, got {val_batch_size}")
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"{DM}.num_batches (task.iterations) must be >= 1 or null, got {num_batches}")
        dataset = DatasetOptions.of(dataset).to_dict()  # plain values in the checkpoint's hparams
        self.dataset = DatasetOptions.of(dataset)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self.train_path, self.val_path, self.val_fraction, self.seed = (
            train_path,
            val_path,
            val_fraction,
            seed,
        )
        self.batch_size, self.val_batch_size, self.num_batches = batch_size, val_batch_size, num_batches
        self.num_workers, self.on_error, self.max_prompt_tokens = num_workers, on_error, max_prompt_tokens
        self.collate = PromptCollator(int(tokenizer.pad_token_id))
        self.train_records: list[PromptRecord] | None = None
        self.val_records: list[PromptRecord] = []
        self._train: list[PromptItem] = []
        self._val: list[PromptItem] = []

    @property
    def all_records(self) -> list[PromptRecord]:
        """Training then validation records (for per-prompt statistics such as r_ref)."""
        if self.train_records is None:
            raise RuntimeError("PromptDataModule.setup() has not been called yet")
        return [*self.train_records, *self.val_records]

    @property
    def all_items(self) -> list[PromptItem]:
        """Training then validation items, in :attr:`all_records` order: the exact prompt ids rollouts use
        (r_ref must be sampled from these, so that it scores what the policy is prompted with)."""
        if self.train_records is None:
            raise RuntimeError("PromptDataModule.setup() has not been called yet")
        return [*self._train, *self._val]

    def setup(self, stage: str | None = None) -> None:
        """Load, split and tokenise (once)."""
        if self.train_records is not None:
            return
        records = load_prompts(self.train_path, self.on_error, dataset=self.dataset)
        if self.val_path is not None:
            offset = max(r.id for r in records) + 1
            train, val = (
                records,
                load_prompts(self.val_path, self.on_error, id_offset=offset, dataset=self.dataset),
            )
            clash = sorted({r.id for r in train} & {r.id for r in val})
            if clash:
                raise ValueError(
                    f"prompt ids {clash[:5]} appear in both {DM}.train_path ({self.train_path}) and "
                    f"{DM}.val_path ({self.val_path}); ids must be unique across the two files"
                )
        else:
            tr, va = split_indices(len(records), self.val_fraction, self.seed)
            train, val = [records[i] for i in tr], [records[i] for i in va]
        if len(train) < self.batch_size:
            raise ValueError(
                f"{DM}.batch_size ({self.batch_size}) exceeds the {len(train)} training prompts in "
                f"{Path(self.train_path).name}; with drop_last there would be no batch"
            )
        self._train, self._val = self._encode(train), self._encode(val)
        self.train_records, self.val_records = train, val

    def _encode(self, records: list[PromptRecord]) -> list[PromptItem]:
        rendered = render(
            self.tokenizer, [r.prompt for r in records], self.chat_template, self.max_prompt_tokens
        )
        return [
            PromptItem(
                id=r.id, prompt=prompt_text(r.prompt), input_ids=truncate_left(ids, self.max_prompt_tokens, n)
            )
            for r, (ids, n) in zip(records, rendered)
        ]

    def _world(self) -> tuple[int, int]:
        """(rank, world size) of this process: (0, 1) outside a Trainer."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._world()
        num_batches = self.num_batches
        if num_batches is None and world > 1:  # one shuffled pass, sharded
            num_batches = len(self._train) // (self.batch_size * world)
        if num_batches is None:
            return loader(
                self._train,
                self.batch_size,
                self.collate,
                self.num_workers,
                shuffle_seed=self.seed,
                drop_last=True,
            )
        # on resume, skip the batches the restored PPO module has already trained on
        done = getattr(self.trainer.lightning_module, "iteration", 0) if self.trainer is not None else 0
        sampler = CycledBatchSampler(
            len(self._train), self.batch_size, num_batches, self.seed, start=done, rank=rank, world_size=world
        )
        return DataLoader(
            self._train,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self._val:
            return []
        rank, world = self._world()
        if world == 1:
            return loader(self._val, self.val_batch_size, self.collate, self.num_workers)
        # each rank evaluates every world-th prompt (a few repeat so that ranks have equal batches)
        sampler = DistributedSampler(self._val, num_replicas=world, rank=rank, shuffle=False)
        return loader(self._val, self.val_batch_size, self.collate, self.num_workers, sampler=sampler)
