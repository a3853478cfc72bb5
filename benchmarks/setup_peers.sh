#!/usr/bin/env bash
# Create the peers' virtual environments (never part of lit_rlhf's dependencies).
#
#   benchmarks/.venvs/trl116  TRL 1.16.0 (RewardTrainer, RLOOTrainer)
#   benchmarks/.venvs/trl112  TRL 1.12.0, the last release shipping trl.experimental.ppo (PPOTrainer);
#                             1.13.0 removed it (checked by listing the wheels: `pip download trl==X --no-deps`).
#
# torch is pinned to 2.13.0, the CPU build pip finds on local disk (a bare `torch` would pull CUDA),
# and transformers to the version lit_rlhf's venv runs, so both sides execute the same modelling code.
# Idempotent: an existing, importable venv is kept.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
TORCH="torch==2.13.0"
TRANSFORMERS="${TRANSFORMERS:-transformers==$(/work/venv/bin/python -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo 5.23.0)}"

make_venv() {  # name, trl version
  local dir="$HERE/.venvs/$1" trl="$2"
  if "$dir/bin/python" -c "import trl, sys; sys.exit(trl.__version__ != '$trl')" 2>/dev/null; then
    echo "[setup_peers] $dir has trl $trl"; return
  fi
  "$PY" -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q "$TORCH"
  "$dir/bin/pip" install -q "$TORCH" "$TRANSFORMERS" "trl==$trl" psutil
  "$dir/bin/python" -c "import torch, transformers, trl; print('[setup_peers]', '$1', 'torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
}

make_venv trl116 1.16.0
make_venv trl112 1.12.0
