#!/usr/bin/env bash
# One study from scratch: its Hydra multirun (two jobs at a time, one thread each), then its plots + table.
#
#   bash studies/study.sh single_reward            # studies/conf/experiment/single_reward.yaml
#   bash studies/study.sh combination seed=0       # extra overrides narrow or change the sweep
#
# Writes multirun/study/<name>/ (one folder per job) and multirun/study/<name>/analysis/ (PNGs,
# results.md). Python: $PYTHON, else the checkout's .venv, else `python`; it needs the `sweep` extra
# (hydra-joblib-launcher) and `plots` (matplotlib), which `.[dev]` includes.
# Re-running the same command resumes each job from its folder's last checkpoint (an interrupted study goes
# on); delete the folder for a fresh study.
set -euo pipefail
name=${1:?usage: bash studies/study.sh EXPERIMENT [overrides...]}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python)}
out=${STUDY_DIR:-multirun/study/$name}
jobs=${STUDY_JOBS:-2}
OMP_NUM_THREADS=1 "$py" "$here/train.py" -m "experiment=$name" hydra/launcher=joblib \
    "hydra.launcher.n_jobs=$jobs" "hydra.sweep.dir=$out" trainer.enable_progress_bar=false "$@"
"$py" "$here/studies/analyze_sweep.py" "$out" --at-kl "${AT_KL:-1.0}"
