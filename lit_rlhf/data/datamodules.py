"""LightningDataModules for supervised fine-tuning (SFT) and reward modelling (preferences); the prompt
datamodule of the policy tasks is :mod:`lit_rlhf.data.prompts`.

Every constructor argument is a ``task.datamodule.*`` YAML key. Files are read, split and tokenised
once in ``setup()``; a second call is a no-op. Every datamodule renders prompts with
:mod:`lit_rlhf.data.chat` under the same ``chat_template`` setting, so an SFT or reward-model sequence
starts with exactly the ids a rollout of the same prompt is prompted with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
from torch.utils.data import DataLoader

from lit_rlhf.data.batching import CycledBatchSampler, split_indices
from lit_rlhf.data.chat import ChatTemplate
from lit_rlhf.data.common import check_common, check_max_length, loader, render
from lit_rlhf.data.jsonl import OnError, PreferencePair, SFTExample, load_preferences, load_sft
from lit_rlhf.data.prompts import PromptDataModule
from lit_rlhf.data.sources import DatasetOptions
from lit_rlhf.data.tokenize import (
    PreferenceCollator,
    PreferenceItem,
    SFTCollator,
    SFTItem,
    batch_ids,
    eos_id,
    join_ids,
)

__all__ = ["CycledBatchSampler", "PreferenceDataModule", "PromptDataModule", "SFTDataModule", "split_indices"]

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class SFTDataModule(L.LightningDataModule):
    """Demonstrations (``{prompt, completion}``, ``{prompt, response}`` or ``{messages}``) for SFT.

    Batches come from :class:`~lit_rlhf.data.tokenize.SFTCollator`: ``input_ids``, ``attention_mask``,
    ``labels`` (-100 on prompt and padding).

    Args:
        tokenizer: The policy's tokenizer (pad and eos tokens must be set).
        train_path: Demonstrations (strings or conversations): a JSONL file or a ``datasets`` source.
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
        dataset: When a path is a ``datasets`` source (saved folder, parquet/arrow/JSON file, Hub id):
            ``split``, ``subset``, ``revision`` and ``columns`` (field → column, e.g. ``{"prompt":
            "question"}``); see :class:`~lit_rlhf.data.sources.DatasetOptions`. The ``data`` group's keys.
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
        dataset: DatasetOptions | dict | None = None,
    ) -> None:
        super().__init__()
        self.chat_template = check_common(
            tokenizer, val_fraction, batch_size, max_prompt_tokens, num_workers, on_error, chat_template
        )
        check_max_length(max_prompt_tokens, max_length)
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
        examples = load_sft(self.train_path, self.on_error, dataset=self.dataset)
        if self.val_path is not None:
            train, val = examples, load_sft(self.val_path, self.on_error, dataset=self.dataset)
        else:
            tr, va = split_indices(len(examples), self.val_fraction, self.seed)
            train, val = [examples[i] for i in tr], [examples[i] for i in va]
        self._train, self._val = self._encode(train), self._encode(val)
        self.train_examples, self.val_examples = train, val

    def _encode(self, examples: list[SFTExample]) -> list[SFTItem]:
        tok, eos = self.tokenizer, eos_id(self.tokenizer)
        prompts = render(tok, [e.prompt for e in examples], self.chat_template, self.max_prompt_tokens)
        responses = batch_ids(tok, [e.response for e in examples])
        items = []
        for (prompt, n_keep), response in zip(prompts, responses):
            ids, n = join_ids(prompt, response, eos, self.max_prompt_tokens, self.max_length, n_keep=n_keep)
            items.append(SFTItem(input_ids=ids, n_prompt=n))
        return items

    def train_dataloader(self) -> DataLoader:
        return loader(self._train, self.batch_size, self.collate, self.num_workers, shuffle_seed=self.seed)

    def val_dataloader(self) -> DataLoader | list:
        return loader(self._val, self.batch_size, self.collate, self.num_workers) if self._val else []


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs (explicit ``{prompt, chosen, rejected}`` or implicit ``{chosen, rejected}``,
    strings or conversations) for a reward model.

    Batches come from :class:`~lit_rlhf.data.tokenize.PreferenceCollator`: ``input_ids`` and
    ``attention_mask`` of shape (2B, T), chosen rows first, then the rejected rows in the same order.

    Args:
        tokenizer: The reward model's tokenizer (pad and eos tokens must be set).
        path: Preference pairs: a JSONL file or a ``datasets`` source (see ``dataset``).
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
        dataset: When a path is a ``datasets`` source (saved folder, parquet/arrow/JSON file, Hub id):
            ``split``, ``subset``, ``revision`` and ``columns`` (field → column, e.g. ``{"prompt":
            "question"}``); see :class:`~lit_rlhf.data.sources.DatasetOptions`. The ``data`` group's keys.
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
        dataset: DatasetOptions | dict | None = None,
    ) -> None:
        super().__init__()
        self.chat_template = check_common(
            tokenizer, val_fraction, batch_size, max_prompt_tokens, num_workers, on_error, chat_template
        )
        check_max_length(max_prompt_tokens, max_length)
        dataset = DatasetOptions.of(dataset).to_dict()  # plain values in the checkpoint's hparams
        self.dataset = DatasetOptions.of(dataset)
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
        pairs = load_preferences(self.path, self.on_error, dataset=self.dataset)
        if self.val_path is not None:
            train, val = pairs, load_preferences(self.val_path, self.on_error, dataset=self.dataset)
        else:
            tr, va = split_indices(len(pairs), self.val_fraction, self.seed)
            train, val = [pairs[i] for i in tr], [pairs[i] for i in va]
        self._train, self._val = self._encode(train), self._encode(val)
        self.train_pairs, self.val_pairs = train, val

    def _encode(self, pairs: list[PreferencePair]) -> list[PreferenceItem]:
        tok, eos = self.tokenizer, eos_id(self.tokenizer)
        prompts = render(tok, [p.prompt for p in pairs], self.chat_template, self.max_prompt_tokens)
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
        return loader(self._train, self.batch_size, self.collate, self.num_workers, shuffle_seed=self.seed)

    def val_dataloader(self) -> DataLoader | list:
        return loader(self._val, self.batch_size, self.collate, self.num_workers) if self._val else []
