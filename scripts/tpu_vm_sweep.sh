#!/bin/bash
# A sweep on Cloud TPU VMs: one command on every worker through
#   gcloud compute tpus tpu-vm ssh TPU --zone=ZONE --worker=all --command=...
#
#   scripts/tpu_vm_sweep.sh TPU[,TPU...] ZONE SWEEP_CONFIG[:preset] ROOT [--config.x=y ...]
#   scripts/tpu_vm_sweep.sh my-v4-32 us-central2-b configs/sweeps/chomsky.py:paper \
#       /mnt/shared/chomsky-paper --config.sweep.schemes=rope,alibi,floater
#
# The repository must already be on every worker at $REPO (default ~/posenc) with its
# environment installed (pip install -e .), e.g. with
#   gcloud compute tpus tpu-vm scp --recurse --worker=all . TPU:~/posenc --zone=ZONE
#
# ROOT must be storage every worker sees, so that finished points are found whoever ran them
# and `experiments.collect ROOT` sees them all: a Filestore / NFS mount, whose locks work
# across hosts (docs/clusters.md, "Which storage has working locks"). gcsfuse keeps locks on
# one host only: there, use MODE=shard (each point belongs to exactly one worker, so no lock is
# needed) with POSENC_WORKDIR_LOCK=off, which this script passes on to the workers, and start
# nothing else on the same ROOT.
#
# MODE=shard (default): every worker runs its own share of the points, on its own host's chips,
#   python -m experiments.sweep ... --shard=<worker>/<workers>
# (points w, w+n, w+2n, ...). Each worker is told to treat its host as a one-host slice (the
# TPU_* variables below; adjust TPU_CHIPS_PER_HOST_BOUNDS to your host: 2,2,1 for v4/v5p hosts of
# 4 chips, 2,4,1 for 8-chip v5e/v6e hosts). Single-host VMs (v4-8, v5litepod-8, ...) need none
# of it; run several such VMs with TPU=vm1,vm2,... instead.
#
# MODE=multihost: each point is one run over the whole slice (large models, long contexts):
# every worker of a VM goes through the points in the same order, running for each
#   python -m experiments.run ... --sweep_index=<i> --distributed
# so that the processes of the slice start jax.distributed together (experiments/run.py,
# posenc/parallel.py: the TPU runtime tells jax.distributed.initialize() the coordinator) and
# form one program spanning the hosts; only process 0 locks the workdir and writes results and
# DONE, hence ROOT on shared storage. A finished point returns at once; a point another slice
# holds ends with status 2 and the workers go on to the next (so several slices, TPU=a,b, share
# the points when ROOT's locks work across hosts). Each run's exit status is logged.
#
# Logs: ROOT/logs/worker-<n>.log on each worker; the work runs in the background and ignores
# the hang-up, so the ssh session may end. Running this script again resumes: finished points
# are skipped, others resume from their checkpoints.
#
# Environment: MODE (shard | multihost), REPO, TPU_CHIPS_PER_HOST_BOUNDS; WORKERS=4[,1,...]
# gives each VM's worker count instead of asking gcloud; DRY_RUN=1 prints each VM's gcloud
# command instead of running it (the sweep is still counted, which checks every point).

set -euo pipefail

if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU[,TPU...] ZONE SWEEP_CONFIG[:preset] ROOT [--config.x=y ...]" >&2
  exit 2
fi
TPUS=$1
ZONE=$2
CONFIG=$3
ROOT=$4
shift 4
MODE=${MODE:-shard}
REPO=${REPO:-'~/posenc'}
CHIPS=${TPU_CHIPS_PER_HOST_BOUNDS:-2,2,1}
DRY_RUN=${DRY_RUN:-0}
if [[ "$MODE" != "shard" && "$MODE" != "multihost" ]]; then
  echo "error: MODE must be shard or multihost, not '$MODE'" >&2
  exit 2
fi
EXTRA=""
[[ $# -gt 0 ]] && EXTRA=$(printf ' %q' "$@")
QROOT=$(printf '%q' "$ROOT")
QCONFIG=$(printf '%q' "$CONFIG")

# Check the sweep here first (bad keys, unknown schemes) rather than on every worker.
N=$(python -m experiments.sweep --config="$CONFIG" --root="$ROOT" --count "$@")
IFS=',' read -r -a VMS <<<"$TPUS"

count_workers() {
  gcloud compute tpus tpu-vm describe "$1" --zone="$ZONE" \
    --format='value(networkEndpoints[].ipAddress)' | tr ';,' '\n\n' | grep -c .
}

# Worker ids: every worker of every VM gets a global index, offset by the workers before it.
declare -a COUNTS
if [[ -n "${WORKERS:-}" ]]; then
  IFS=',' read -r -a COUNTS <<<"$WORKERS"
  if [[ ${#COUNTS[@]} -ne ${#VMS[@]} ]]; then
    echo "error: WORKERS=$WORKERS gives ${#COUNTS[@]} count(s) for ${#VMS[@]} VM(s); give one per VM" >&2
    exit 2
  fi
else
  for vm in "${VMS[@]}"; do
    COUNTS+=("$(count_workers "$vm")")
  done
fi
TOTAL=0
for c in "${COUNTS[@]}"; do
  TOTAL=$((TOTAL + c))
done
echo "$N point(s) of $CONFIG; $TOTAL worker(s) on ${#VMS[@]} VM(s); mode $MODE"

WORKER='$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)'
LOCKS=""
[[ -n "${POSENC_WORKDIR_LOCK:-}" ]] && LOCKS="POSENC_WORKDIR_LOCK=$(printf '%q' "$POSENC_WORKDIR_LOCK") "
OFFSET=0
for i in "${!VMS[@]}"; do
  vm=${VMS[$i]}
  LOG="$QROOT/logs/worker-\$((W + $OFFSET)).log"
  if [[ "$MODE" == "shard" ]]; then
    ENV="TPU_SKIP_MDS_QUERY=1 TPU_HOST_BOUNDS=1,1,1 TPU_CHIPS_PER_HOST_BOUNDS=$CHIPS"
    ENV+=" TPU_WORKER_HOSTNAMES=localhost TPU_WORKER_ID=0 "
    [[ ${COUNTS[$i]} -eq 1 ]] && ENV=""  # a single-host VM is a whole slice already
    WORK="$LOCKS${ENV}nohup python -m experiments.sweep --config=$QCONFIG --root=$QROOT \
--shard=\$((W + $OFFSET))/$TOTAL$EXTRA < /dev/null > $LOG 2>&1 &"
  else
    # One experiments.run per point, the same sequence on every worker of the slice.
    WORK="( trap '' HUP; for i in \$(seq 0 $((N - 1))); do ${LOCKS}\
python -m experiments.run --config=$QCONFIG --sweep_index=\$i --distributed \
--config.workdir=$QROOT$EXTRA; echo \"point \$i: exit \$?\"; done ) < /dev/null > $LOG 2>&1 &"
  fi
  CMD="cd $REPO && W=$WORKER && mkdir -p $QROOT/logs && $WORK"
  if [[ "$DRY_RUN" == "1" ]]; then
    echo "gcloud compute tpus tpu-vm ssh $(printf '%q' "$vm") --zone=$(printf '%q' "$ZONE") \
--worker=all --command='${CMD//\'/\'\\\'\'}'"
  else
    echo "[$vm] $CMD"
    gcloud compute tpus tpu-vm ssh "$vm" --zone="$ZONE" --worker=all --command="$CMD"
  fi
  OFFSET=$((OFFSET + ${COUNTS[$i]}))
done
[[ "$DRY_RUN" == "1" ]] && exit 0
echo "started; follow with: gcloud compute tpus tpu-vm ssh ${VMS[0]} --zone=$ZONE --worker=0 \
--command='tail -f $ROOT/logs/worker-0.log'"
