"""Data layer: ``jsonl`` (reading and validating user files), ``tokenize`` (truncation and collators),
``datamodules`` (the SFT, preference and prompt LightningDataModules that ``conf/task/*`` target)."""

from lit_rlhf.data.datamodules import PreferenceDataModule, PromptDataModule, SFTDataModule
from lit_rlhf.data.jsonl import (
    DataFormatError,
    PreferencePair,
    PromptRecord,
    SFTExample,
    load_preferences,
    load_prompts,
    load_sft,
)

__all__ = [
    "DataFormatError",
    "PreferenceDataModule",
    "PreferencePair",
    "PromptDataModule",
    "PromptRecord",
    "SFTDataModule",
    "SFTExample",
    "load_preferences",
    "load_prompts",
    "load_sft",
]
