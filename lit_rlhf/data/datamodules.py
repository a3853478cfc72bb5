"""LightningDataModules for the three stages: SFT, reward modelling (preferences) and PPO (prompts).

Every constructor argument is a ``task.datamodule.*`` YAML key. Files are read, split and tokenised
once in ``setup()``; a second call is a no-op. All three render prompts with :mod:`lit_rlhf.data.chat`
under the same ``chat_template`` setting, so an SFT or reward-model sequence starts with exactly the ids
a PPO rollout of the same prompt is prompted with.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lit_rlhf.data.chat import (
    ChatTemplate,
    Prompt,
    check_chat_template,
    prompt_text,
    render_prompts,
    truncate_left,
)
from lit_rlhf.data.jsonl import (
    OnError,
    PreferencePair,
    PromptRecord,
    SFTExample,
    load_preferences,
    load_prompts,
    load_sft,
)
from lit_rlhf.data.sampling import CycledBatchSampler, split_indices
from lit_rlhf.data.tokenize import (
    PreferenceCollator,
    PreferenceItem,
    PromptCollator,
    PromptItem,
    SFTCollator,
    SFTItem,
    batch_ids,
    eos_id,
    join_ids,
)

log = logging.getLogger(__name__)
DM = "task.datamodule"  # where every argument below is set
__all__ = ["CycledBatchSampler", "PreferenceDataModule", "PromptDataModule", "SFTDataModule", "split_indices"]

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _check_common(
    tokenizer: PreTrainedTokenizerBase,
    val_fraction: float,
    batch_size: int,
    max_prompt_tokens: int,
    num_workers: int,
    on_error: str,
    chat_template: Any = "auto",
) -> ChatTemplate:
    """Validate the arguments every datamodule shares; errors name the config key. Returns the
    validated ``chat_template``."""
    if tokenizer.pad_token_id is None:
        name = getattr(tokenizer, "name_or_path", "") or "(built in memory)"
        raise ValueError(
            f"the tokenizer {name} has no pad_token: set one in its tokenizer_config.json (e.g. the eos "
            "token), or pick another tokenizer with model.tokenizer_path, so batches can be padded."
        )
    eos_id(tokenizer)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"{DM}.val_fraction must be in [0, 1), got {val_fraction}")
    if batch_size < 1:
        raise ValueError(f"{DM}.batch_size must be >= 1, got {batch_size}")
    if max_prompt_tokens < 1:
        raise ValueError(f"{DM}.max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    if num_workers < 0:
        raise ValueError(f"{DM}.num_workers must be >= 0, got {num_workers}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"{DM}.on_error must be 'raise' or 'skip', got {on_error!r}")
    return check_chat_template(chat_template)


def _render(
    tok: PreTrainedTokenizerBase, prompts: list[Prompt], chat_template: ChatTemplate, max_prompt_tokens: int
) -> list[tuple[list[int], int]]:
    """:func:`~lit_rlhf.data.chat.render_prompts`, warning once when prompts are longer than the budget
    (a chat template's system turn alone can fill a budget sized for short plain prompts)."""
    rendered = render_prompts(tok, prompts, chat_template)
    lengths = [len(ids) for ids, _ in rendered]
    n_cut = sum(n > max_prompt_tokens for n in lengths)
    if n_cut:
        log.warning(
            "%d of %d prompts are longer than %s.max_prompt_tokens=%d tokens (longest %d) and lose their "
            "start when truncated; raise it if their text is cut",
            n_cut,
            len(lengths),
            DM,
            max_prompt_tokens,
            max(lengths),
        )
    return rendered


def _check_max_length(max_prompt_tokens: int, max_length: int) -> None:
    if max_length <= max_prompt_tokens:
        raise ValueError(
            f"{DM}.max_length ({max_length}) must exceed {DM}.max_prompt_tokens ({max_prompt_tokens}) "
            "to leave room for a response"
        )


def _loader(
    items: list[Any],
    batch_size: int,
    collate: Any,
    num_workers: int,
    shuffle_seed: int | None = None,
    **kw: Any,
) -> DataLoader:
    gen = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    return DataLoader(
        items,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        generator=gen,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        **kw,
    )


class SFTDataModule(L.LightningDataModule):
    """Demonstrations (``{prompt, completion}``, ``{prompt, response}`` or ``{messages}``) for SFT.

    Batches come from :class:`~lit_rlhf.data.tokenize.SFTCollator`: ``input_ids``, ``attention_mask``,
    ``labels`` (-100 on prompt and padding).

    Args:
        tokenizer: The policy's tokenizer (pad and eos tokens must be set).
        train_path: JSONL file of demonstrations (strings or conversations).
        val_path: Optional separate validation file; if None, ``val_fraction`` of train is held out.
        val_fraction: Share of ``train_path`` held out when ``val_path`` is None (0: no validation).
        seed: Seed of the split and of the training shuffle.
        batch_size: Examples per batch.
        max_prompt_tokens: Prompt tokens kept (from the end, and a leading BOS).
        max_length: Total tokens kept (response tail cut, eos dropped).
        num_workers: DataLoader workers.
        on_error: "raise" on a bad line, or "skip" bad lines with one warning.
        chat_template: ``"auto"``, ``True`` or ``False``: whether plain-string prompts go through the
            tokenizer's chat template (conversations always do); see :mod:`lit_rlhf.data.chat`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        train_path: str,
        val_path: str | None = None,
        val_fraction: float = 0.05,
        seed: int = 0,
        batch_size: int = 64,
        max_prompt_tokens: int = 32,
        max_length: int = 64,
        num_workers: int = 0,
        on_error: OnError = "raise",
        chat_template: ChatTemplate = "auto",
    ) -> None:
        super().__init__()
        self.chat_template = _check_common(
            tokenizer, val_fraction, batch_size, max_prompt_tokens, num_workers, on_error, chat_template
        )
        _check_max_length(max_prompt_tokens, max_length)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self.train_path, self.val_path, self.val_fraction, self.seed = (
            train_path,
            val_path,
            val_fraction,
            seed,
        )
        self.batch_size, self.num_workers, self.on_error = batch_size, num_workers, on_error
        self.max_prompt_tokens, self.max_length = max_prompt_tokens, max_length
        self.collate = SFTCollator(int(tokenizer.pad_token_id))
        self.train_examples: list[SFTExample] | None = None
        self.val_examples: list[SFTExample] = []
        self._train: list[SFTItem] = []
        self._val: list[SFTItem] = []

    def setup(self, stage: str | None = None) -> None:
        """Load, split and tokenise (once)."""
        if self.train_examples is not None:
            return
        examples = load_sft(self.train_path, self.on_error)
        if self.val_path is not None:
            train, val = examples, load_sft(self.val_path, self.on_error)
        else:
            tr, va = split_indices(len(examples), self.val_fraction, self.seed)
            train, val = [examples[i] for i in tr], [examples[i] for i in va]
        self._train, self._val = self._encode(train), self._encode(val)
        self.train_examples, self.val_examples = train, val

    def _encode(self, examples: list[SFTExample]) -> list[SFTItem]:
        tok, eos = self.tokenizer, eos_id(self.tokenizer)
        prompts = _render(tok, [e.prompt for e in examples], self.chat_template, self.max_prompt_tokens)
        responses = batch_ids(tok, [e.response for e in examples])
        items = []
        for (prompt, n_keep), response in zip(prompts, responses):
            ids, n = join_ids(prompt, response, eos, self.max_prompt_tokens, self.max_length, n_keep=n_keep)
            items.append(SFTItem(input_ids=ids, n_prompt=n))
        return items

    def train_dataloader(self) -> DataLoader:
        return _loader(self._train, self.batch_size, self.collate, self.num_workers, shuffle_seed=self.seed)

    def val_dataloader(self) -> DataLoader | list:
        return _loader(self._val, self.batch_size, self.collate, self.num_workers) if self._val else []


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs (explicit ``{prompt, chosen, rejected}`` or implicit ``{chosen, rejected}``,
    strings or conversations) for a reward model.

    Batches come from :class:`~lit_rlhf.data.tokenize.PreferenceCollator`: ``input_ids`` and
    ``attention_mask`` of shape (2B, T), chosen rows first, then the rejected rows in the same order.

    Args:
        tokenizer: The reward model's tokenizer (pad and eos tokens must be set).
        path: JSONL file of preference pairs.
        val_path: Optional separate validation file; if None, ``val_fraction`` of ``path`` is held out.
        val_fraction: Share of ``path`` held out when ``val_path`` is None (0: no validation).
        seed: Seed of the split and of the training shuffle.
        batch_size: Pairs per batch (the model sees 2 x batch_size sequences).
        max_prompt_tokens: Prompt tokens kept (from the end, and a leading BOS).
        max_length: Total tokens kept (response tail cut, eos dropped).
        num_workers: DataLoader workers.
        on_error: "raise" on a bad line, or "skip" bad lines with one warning.
        chat_template: ``"auto"``, ``True`` or ``False``: whether plain-string prompts go through the
            tokenizer's chat template (conversations always do); see :mod:`lit_rlhf.data.chat`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        path: str,
        val_path: str | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 64,
        max_prompt_tokens: int = 32,
        max_length: int = 64,
        num_workers: int = 0,
        on_error: OnError = "raise",
        chat_template: ChatTemplate = "auto",
    ) -> None:
        super().__init__()
        self.chat_template = _check_common(
            tokenizer, val_fraction, batch_size, max_prompt_tokens, num_workers, on_error, chat_template
        )
        _check_max_length(max_prompt_tokens, max_length)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self.path, self.val_path, self.val_fraction, self.seed = path, val_path, val_fraction, seed
        self.batch_size, self.num_workers, self.on_error = batch_size, num_workers, on_error
        self.max_prompt_tokens, self.max_length = max_prompt_tokens, max_length
        self.collate = PreferenceCollator(int(tokenizer.pad_token_id))
        self.train_pairs: list[PreferencePair] | None = None
        self.val_pairs: list[PreferencePair] = []
        self._train: list[PreferenceItem] = []
        self._val: list[PreferenceItem] = []

    def setup(self, stage: str | None = None) -> None:
        """Load, split and tokenise (once)."""
        if self.train_pairs is not None:
            return
        pairs = load_preferences(self.path, self.on_error)
        if self.val_path is not None:
            train, val = pairs, load_preferences(self.val_path, self.on_error)
        else:
            tr, va = split_indices(len(pairs), self.val_fraction, self.seed)
            train, val = [pairs[i] for i in tr], [pairs[i] for i in va]
        self._train, self._val = self._encode(train), self._encode(val)
        self.train_pairs, self.val_pairs = train, val

    def _encode(self, pairs: list[PreferencePair]) -> list[PreferenceItem]:
        tok, eos = self.tokenizer, eos_id(self.tokenizer)
        prompts = _render(tok, [p.prompt for p in pairs], self.chat_template, self.max_prompt_tokens)
        chosen = batch_ids(tok, [p.chosen for p in pairs])
        rejected = batch_ids(tok, [p.rejected for p in pairs])

        def join(prompt: tuple[list[int], int], response: list[int]) -> list[int]:
            ids, n_keep = prompt
            return join_ids(ids, response, eos, self.max_prompt_tokens, self.max_length, n_keep=n_keep)[0]

        return [
            PreferenceItem(chosen_ids=join(p, c), rejected_ids=join(p, r))
            for p, c, r in zip(prompts, chosen, rejected)
        ]

    def train_dataloader(self) -> DataLoader:
        return _loader(self._train, self.batch_size, self.collate, self.num_workers, shuffle_seed=self.seed)

    def val_dataloader(self) -> DataLoader | list:
        return _loader(self._val, self.batch_size, self.collate, self.num_workers) if self._val else []


class PromptDataModule(L.LightningDataModule):
    """Prompts for PPO rollouts: any prompt-only, SFT or preference file (strings or conversations).

    Batches come from :class:`~lit_rlhf.data.tokenize.PromptCollator`: left-padded ``input_ids`` and
    ``attention_mask`` (B, T), ``prompt_ids`` (B,) and ``prompts`` (list[str], for display: a
    conversation's last user message). :attr:`all_items` holds the exact ids of every prompt.

    Args:
        tokenizer: The policy's tokenizer (pad and eos tokens must be set).
        train_path: JSONL file whose records have a prompt (deduplicated).
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
    ) -> None:
        super().__init__()
        self.chat_template = _check_common(
            tokenizer, val_fraction, batch_size, max_prompt_tokens, num_workers, on_error, chat_template
        )
        if val_batch_size < 1:
            raise ValueError(f"{DM}.val_batch_size must be >= 1, got {val_batch_size}")
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"{DM}.num_batches (task.iterations) must be >= 1 or null, got {num_batches}")
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
        records = load_prompts(self.train_path, self.on_error)
        if self.val_path is not None:
            offset = max(r.id for r in records) + 1
            train, val = records, load_prompts(self.val_path, self.on_error, id_offset=offset)
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
        rendered = _render(
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
            return _loader(
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
            return _loader(self._val, self.val_batch_size, self.collate, self.num_workers)
        # each rank evaluates every world-th prompt (a few repeat so that ranks have equal batches)
        sampler = DistributedSampler(self._val, num_replicas=world, rank=rank, shuffle=False)
        return _loader(self._val, self.val_batch_size, self.collate, self.num_workers, sampler=sampler)
