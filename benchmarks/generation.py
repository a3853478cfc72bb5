"""``generation=vllm`` against ``generation=hf``: lit_rlhf's policy tasks, same settings, alternating runs.

    python benchmarks/prepare.py --size smollm2          # once (random weights of SmolLM2-135M's shapes)
    python benchmarks/generation.py --size smollm2 --task grpo --precision bf16 --repeats 3

Run it with an interpreter that has vLLM (the `.venv-vllm` of .ci/run on CPU): both arms run in it, so torch
and transformers are the same. It is ``ab.py`` with the arms ``hf generation=hf`` and ``vllm
generation=vllm`` (equal work asserted; response tokens within 2 %: the arms sample different responses).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab  # noqa: E402

if __name__ == "__main__":
    ab.main([*sys.argv[1:], "--arm", "hf", "generation=hf", "--arm", "vllm", "generation=vllm"])
