#!/usr/bin/env bash
# The reward-shaping leaderboard of issue #18 in one command: its four sweeps (studies/study.sh, two jobs at
# a time, one thread each), then studies/leaderboard.py over all of them into docs/results/leaderboard/
# (leaderboard.md, leaderboard.png, single_vs_kl.png, combination_vs_kl.png). Prints the wall time.
#
#   bash studies/leaderboard.sh                 # extra arguments go to leaderboard.py, e.g. --at-kl 0.5
#
# Sweeps (conf/experiment/, seeds 0, 1, 2; each header gives its grid, job count and the pairs left out):
#   leaderboard                          PPO × 8 one-reward methods × β {0.2, 0.5}       48 jobs
#   leaderboard_critic_free              GRPO, RLOO × 5 one-reward methods × β 0.2       30 jobs
#   leaderboard_combination              PPO × 4 two-reward methods × β {0.2, 0.5}       24 jobs
#   leaderboard_combination_critic_free  GRPO, RLOO × 4 two-reward methods × β 0.2       24 jobs
# Jobs: 126. Measured: 78 min on the idle 2-core machine from an empty stage cache (sweeps 35, 16, 14 and
# 12 min; the ranking 18 s; estimated beforehand at ≈ 165 min from study 3's time per job).
# Re-running resumes: finished jobs are skipped, interrupted ones continue from their last checkpoint
# (delete multirun/study/leaderboard* for a fresh leaderboard).
# Python: $PYTHON, else the checkout's .venv, else `python` (as studies/study.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python)}
start=$(date +%s)
sweeps=(leaderboard leaderboard_critic_free leaderboard_combination leaderboard_combination_critic_free)
for name in "${sweeps[@]}"; do
    STUDY_DIR=multirun/study/$name bash "$here/studies/study.sh" "$name"
done
minutes=$(( ($(date +%s) - start + 30) / 60 ))
"$py" "$here/studies/leaderboard.py" "${sweeps[@]/#/multirun/study/}" --out docs/results/leaderboard \
    --wall-time "$minutes" "$@"
# every job's scalars and per-prompt results, kept in git (multirun/ is not): re-rank with leaderboard.py
"$py" "$here/studies/sweep_runs.py" archive "${sweeps[@]/#/multirun/study/}" \
    --out docs/results/leaderboard/runs.jsonl.gz
echo "leaderboard: wall time $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
