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
# require_positive_int <name> <value>: stop unless value is a positive integer.
require_positive_int() {
    case "$2" in
        ''|*[!0-9]*) echo "$0: $1 must be a positive integer, got '$2'" >&2; exit 2 ;;
    esac
    if [ "$2" -lt 1 ]; then
        echo "$0: $1 must be a positive integer, got '$2'" >&2; exit 2
    fi
}
require_positive_int "the number of GPUs" "$GPUS"
if [ "$GPUS" -lt 8 ]; then
    GPUS_PER_NODE=${GPUS_PER_NODE:-$GPUS}
else
    GPUS_PER_NODE=${GPUS_PER_NODE:-8}
fi
require_positive_int GPUS_PER_NODE "$GPUS_PER_NODE"
if [ "$GPUS_PER_NODE" -gt "$GPUS" ]; then
    GPUS_PER_NODE=$GPUS
fi
# A last node with fewer tasks would hold GPUs it does not use, and --cache_mode needs full nodes.
if [ $(( GPUS % GPUS_PER_NODE )) -ne 0 ]; then
    echo "$0: $GPUS GPUs is not a multiple of GPUS_PER_NODE=$GPUS_PER_NODE (every node runs that many" \
        "tasks); use a multiple, or set GPUS_PER_NODE" >&2
    exit 2
fi
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
