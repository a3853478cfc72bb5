"""Networks: factories for the `model/` group and small helpers shared by the tasks."""

from lit_rlhf.models.factory import Pretrained, TinyGPT2, load_tokenizer, position_ids, quiet_transformers

__all__ = ["Pretrained", "TinyGPT2", "load_tokenizer", "position_ids", "quiet_transformers"]
