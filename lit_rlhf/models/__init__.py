"""Networks: factories for the `model/` group and small helpers shared by the tasks."""

from lit_rlhf.models.factory import Pretrained, TinyGPT2, load_tokenizer, quiet_transformers
from lit_rlhf.models.heads import ValueModel, position_ids, sequence_scores

__all__ = [
    "Pretrained",
    "TinyGPT2",
    "ValueModel",
    "load_tokenizer",
    "position_ids",
    "quiet_transformers",
    "sequence_scores",
]
