#!/bin/sh
# Distributed training under SLURM: one task per GPU, started by srun; main.py reads SLURM_PROCID,
# SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS_PER_NODE and SLURM_NODELIST to join the
# process group (block or cyclic task distribution alike).
#   GPUS_PER_NODE=8 ./tools/run_dist_slurm.sh <partition> <job name> 16 ./configs/r50_deformable_detr.sh [args...]
# Extra srun options go in SRUN_ARGS; CPUS_PER_TASK defaults to 4.
set -e
if [ "$#" -lt 4 ]; then
    echo "usage: [GPUS_PER_NODE=8] $0 <partition> <job name> <total gpus> <script> [args...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
GPUS=$3
shift 3
. "$(dirname "$0")/dist_nodes.sh"
plan_nodes "$GPUS"
CPUS_PER_TASK=${CPUS_PER_TASK:-4}
SRUN_ARGS=${SRUN_ARGS:-""}

set -x
# SRUN_ARGS is split into words on purpose: it holds several options.
# shellcheck disable=SC2086
exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$@"
