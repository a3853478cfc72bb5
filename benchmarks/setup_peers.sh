#!/usr/bin/env bash
# Create the peers' virtual environments (never part of lit_rlhf's dependencies).
#
#   bash benchmarks/setup_peers.sh [PYTHON]
#
# PYTHON is the interpreter lit_rlhf runs with (default: .venv/bin/python at the repository root, found from
# this script's own location). Its torch and transformers versions are read and installed, exactly, in
#
#   benchmarks/.venvs/trl116  TRL 1.16.0 (RewardTrainer, GRPOTrainer, RLOOTrainer)
#   benchmarks/.venvs/trl112  TRL 1.12.0, the last release shipping trl.experimental.ppo (PPOTrainer);
#                             1.13.0 removed it (checked by listing the wheels: `pip download trl==X --no-deps`).
#
# so both sides execute the same modelling code. torch is always pinned (`torch==X`: a bare `torch` could pull
# a CUDA build); if the installed versions do not match PYTHON's exactly, the script fails instead of running
# the benchmark on different code. Idempotent: a venv that already has the right three versions is kept.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
SRC="${1:-$ROOT/.venv/bin/python}"

die() { echo "[setup_peers] ERROR: $*" >&2; exit 1; }

[[ -x "$SRC" ]] || die "$SRC is not an executable Python; pass lit_rlhf's interpreter: bash $0 /path/to/python"
VERSIONS="$("$SRC" -c 'import torch, transformers; print(torch.__version__, transformers.__version__)')" \
  || die "$SRC cannot import torch and transformers (is it lit_rlhf's venv?)"
read -r TORCH_V TF_V <<<"$VERSIONS"
TORCH_PIN="${TORCH_V%%+*}"  # 2.13.0+cpu → torch==2.13.0 (PEP 440: matches the +cpu build); checked below
echo "[setup_peers] from $SRC: torch $TORCH_V, transformers $TF_V"

have() {  # python, trl version → true if torch, transformers and trl are exactly the wanted ones
  "$1" -c "import sys, torch, transformers, trl
sys.exit((torch.__version__, transformers.__version__, trl.__version__) != ('$TORCH_V', '$TF_V', '$2'))" 2>/dev/null
}

make_venv() {  # name, trl version
  local dir="$HERE/.venvs/$1" trl="$2"
  if have "$dir/bin/python" "$trl"; then
    echo "[setup_peers] $dir already has torch $TORCH_V, transformers $TF_V, trl $trl"; return
  fi
  "$SRC" -m venv "$dir"  # same Python as lit_rlhf's venv
  "$dir/bin/python" -m pip install -q --upgrade pip
  "$dir/bin/python" -m pip install -q "torch==$TORCH_PIN"  # alone first: the CPU wheel, never a CUDA one
  "$dir/bin/python" -m pip install -q "torch==$TORCH_PIN" "transformers==$TF_V" "trl==$trl" datasets psutil
  have "$dir/bin/python" "$trl" || die "$dir got $("$dir/bin/python" -c 'import torch, transformers, trl
print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)'), \
wanted torch $TORCH_V, transformers $TF_V, trl $trl"
  echo "[setup_peers] $dir: torch $TORCH_V, transformers $TF_V, trl $trl"
}

make_venv trl116 1.16.0
make_venv trl112 1.12.0
