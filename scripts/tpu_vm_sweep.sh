#!/bin/bash
# A sweep on a Cloud TPU VM slice: the same command on every worker through
#   gcloud compute tpus tpu-vm ssh TPU --zone=ZONE --worker=all --command=...
#
#   scripts/tpu_vm_sweep.sh TPU ZONE SWEEP_CONFIG[:preset] ROOT [--config.x=y ...]
#   scripts/tpu_vm_sweep.sh my-v4-32 us-central2-b configs/sweeps/chomsky.py:paper \
#       /mnt/shared/chomsky-paper --config.sweep.schemes=rope,alibi,floater
#
# The repository must already be on every worker at $REPO (default ~/posenc) with its
# environment installed (pip install -e .), e.g. with
#   gcloud compute tpus tpu-vm scp --recurse --worker=all . TPU:~/posenc --zone=ZONE
# ROOT should be storage every worker sees (a Filestore/NFS or gcsfuse mount) so that
# finished points are found whoever ran them and `experiments.collect ROOT` sees them all.
#
# MODE=shard (default): every worker runs its own share of the points,
#   python -m experiments.sweep ... --shard=<worker>/<workers>
# (points w, w+n, w+2n, ...), each on its own host's chips. Each worker is told to treat its
# host as a one-host slice (the TPU_* variables below; adjust TPU_CHIPS_PER_HOST_BOUNDS to your
# host: 2,2,1 for v4/v5p hosts of 4 chips, 2,4,1 for 8-chip v5e/v6e hosts). Single-host VMs
# (v4-8, v5litepod-8, ...) need none of it; run several such VMs with TPU=vm1,vm2,... instead.
#
# MODE=multihost: every worker runs the *whole* sweep in lock step, so each point is one
# multi-host run over the entire slice (large models / long contexts). This needs the run to call
# jax.distributed.initialize() on multi-host slices (see posenc/train.py) and ROOT on shared
# storage, since only process 0 writes results and DONE.
#
# Logs: ROOT/logs/worker-<n>.log on each worker; the sweep runs under nohup, so the ssh session
# may end. Re-running this script resumes: finished points are skipped, others resume.

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
EXTRA=$(printf ' %q' "$@")

# Check the sweep here first (bad keys, unknown schemes) rather than on every worker.
N=$(python -m experiments.sweep --config="$CONFIG" --root="$ROOT" --count "$@")
IFS=',' read -r -a VMS <<<"$TPUS"

count_workers() {
  gcloud compute tpus tpu-vm describe "$1" --zone="$ZONE" \
    --format='value(networkEndpoints[].ipAddress)' | tr ';,' '\n\n' | grep -c .
}

# Worker ids: every worker of every VM gets a global index, offset by the workers before it.
OFFSET=0
TOTAL=0
declare -a COUNTS
for vm in "${VMS[@]}"; do
  c=$(count_workers "$vm")
  COUNTS+=("$c")
  TOTAL=$((TOTAL + c))
done
echo "$N points of $CONFIG; $TOTAL worker(s) on ${#VMS[@]} VM(s); mode $MODE"

for i in "${!VMS[@]}"; do
  vm=${VMS[$i]}
  WORKER='$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)'
  if [[ "$MODE" == "shard" ]]; then
    ENV="TPU_SKIP_MDS_QUERY=1 TPU_HOST_BOUNDS=1,1,1 TPU_CHIPS_PER_HOST_BOUNDS=$CHIPS"
    ENV+=" TPU_WORKER_HOSTNAMES=localhost TPU_WORKER_ID=0"
    [[ ${COUNTS[$i]} -eq 1 ]] && ENV=""  # a single-host VM is a whole slice already
    SHARD="--shard=\$((W + $OFFSET))/$TOTAL"
  elif [[ "$MODE" == "multihost" ]]; then
    ENV=""
    SHARD=""
  else
    echo "MODE must be shard or multihost, not $MODE" >&2
    exit 2
  fi
  CMD="cd $REPO && W=$WORKER && mkdir -p $(printf '%q' "$ROOT")/logs && \
$ENV nohup python -m experiments.sweep --config=$(printf '%q' "$CONFIG") \
--root=$(printf '%q' "$ROOT") $SHARD$EXTRA < /dev/null > $(printf '%q' "$ROOT")/logs/worker-\$((W + $OFFSET)).log 2>&1 &"
  echo "[$vm] $CMD"
  gcloud compute tpus tpu-vm ssh "$vm" --zone="$ZONE" --worker=all --command="$CMD"
  OFFSET=$((OFFSET + ${COUNTS[$i]}))
done
echo "started; follow with: gcloud compute tpus tpu-vm ssh ${VMS[0]} --zone=$ZONE --worker=0 \
--command='tail -f $ROOT/logs/worker-0.log'"
