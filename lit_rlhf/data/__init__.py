"""Data layer: ``formats`` (TRL's standard and conversational record formats, validated), ``jsonl``
(reading user files), ``chat`` (rendering prompts to ids: chat template, BOS, truncation), ``tokenize``
(sequences and collators), ``datamodules`` (the SFT, preference and prompt LightningDataModules that
``conf/task/*`` target)."""

from lit_rlhf.data.chat import ChatTemplate, encode_prompt_ids, prompt_text, render_prompts
from lit_rlhf.data.datamodules import PreferenceDataModule, SFTDataModule
from lit_rlhf.data.jsonl import (
    DataFormatError,
    PreferencePair,
    PromptRecord,
    SFTExample,
    load_preferences,
    load_prompts,
    load_sft,
)
from lit_rlhf.data.prompts import PromptDataModule

__all__ = [
    "ChatTemplate",
    "DataFormatError",
    "PreferenceDataModule",
    "PreferencePair",
    "PromptDataModule",
    "PromptRecord",
    "SFTDataModule",
    "SFTExample",
    "encode_prompt_ids",
    "load_preferences",
    "load_prompts",
    "load_sft",
    "prompt_text",
    "render_prompts",
]
