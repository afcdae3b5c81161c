#!/bin/bash
# A sweep as a SLURM job array: one array task per point, each running
#   python -m experiments.run --config=<sweep>:<preset> --sweep_index=$SLURM_ARRAY_TASK_ID ...
#
# Submit from the repository root on the login node (the script sizes the array itself):
#
#   scripts/slurm_sweep.sh configs/sweeps/chomsky.py:paper /scratch/$USER/chomsky-paper
#   scripts/slurm_sweep.sh configs/sweeps/decoder.py:paper /scratch/$USER/decoder \
#       --config.sweep.schemes=rope,alibi,none --config.train.steps=200000
#
# which runs `python -m experiments.sweep ... --count` (checking every point first) and then
#   sbatch --array=0-<N-1>%${MAX_PARALLEL:-64} scripts/slurm_sweep.sh <same arguments>
# or do it by hand:
#   N=$(python -m experiments.sweep --config=configs/sweeps/chomsky.py:paper --count)
#   sbatch --array=0-$((N-1))%64 scripts/slurm_sweep.sh configs/sweeps/chomsky.py:paper /scratch/...
#
# Every extra argument (--config.x=y) is passed to each point and wins over the sweep's values.
# A requeued or re-submitted task resumes its point from the latest checkpoint; a finished point
# (DONE in its workdir) returns at once, so re-submitting the whole array after a failure only
# redoes what is missing. Collect when the array is done:
#   python -m experiments.collect /scratch/$USER/chomsky-paper
#
# DRY_RUN=1 prints the command instead of running it: the sbatch line on the login node (after
# counting the points), or, with SLURM_ARRAY_TASK_ID=<i> set, the array task's experiments.run.
#
# Edit the resources below to your cluster (partition, account, GPU type).
#SBATCH --job-name=posenc-sweep
#SBATCH --array=0-0
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%A_%a.out

set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 SWEEP_CONFIG[:preset] ROOT [--config.x=y ...]" >&2
  exit 2
fi
CONFIG=$1
ROOT=$2
shift 2

if [[ -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  # On the login node: count the points (this also checks every one of them) and submit.
  N=$(python -m experiments.sweep --config="$CONFIG" --root="$ROOT" --count "$@")
  SUBMIT=(sbatch --array="0-$((N - 1))%${MAX_PARALLEL:-64}" --output="$ROOT/slurm/%A_%a.out"
          "$0" "$CONFIG" "$ROOT" "$@")
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '%q ' "${SUBMIT[@]}" | sed 's/ $/\n/'
    exit 0
  fi
  echo "submitting $N point(s) of $CONFIG into $ROOT"
  mkdir -p "$ROOT/slurm"
  exec "${SUBMIT[@]}"
fi

# In an array task. Activate your environment here if the job does not inherit it, e.g.
#   source "$SLURM_SUBMIT_DIR/.venv/bin/activate"
cd "${SLURM_SUBMIT_DIR:-.}"
RUN=(python -m experiments.run --config="$CONFIG" --sweep_index="$SLURM_ARRAY_TASK_ID"
     --config.workdir="$ROOT" "$@")
if [[ "${DRY_RUN:-0}" == "1" ]]; then
  printf '%q ' "${RUN[@]}" | sed 's/ $/\n/'
  exit 0
fi
exec "${RUN[@]}"
