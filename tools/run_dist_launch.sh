#!/bin/sh
# Distributed training on this node (and others) through tools/launch.py. POSIX sh, so both
#   GPUS_PER_NODE=8 ./tools/run_dist_launch.sh 8 ./configs/r50_deformable_detr.sh --batch-size 3
#   GPUS_PER_NODE=8 sh tools/run_dist_launch.sh 8 ./configs/r50_deformable_detr.sh --batch-size 3
# work. Several nodes: run it on each with the same MASTER_ADDR/MASTER_PORT and NODE_RANK=0..N-1;
# the first argument is the total number of processes over all nodes.
set -e
if [ "$#" -lt 2 ]; then
    echo "usage: [GPUS_PER_NODE=8] [MASTER_ADDR=..] [MASTER_PORT=..] [NODE_RANK=..] $0 <total gpus> <script> [args...]" >&2
    exit 2
fi
GPUS=$1
shift
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
# Every node runs GPUS_PER_NODE processes: rounding up would start a larger world than asked for.
if [ $(( GPUS % GPUS_PER_NODE )) -ne 0 ]; then
    echo "$0: $GPUS GPUs is not a multiple of GPUS_PER_NODE=$GPUS_PER_NODE (every node runs that many" \
        "processes); use a multiple, or set GPUS_PER_NODE" >&2
    exit 2
fi
NODES=$(( GPUS / GPUS_PER_NODE ))
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NODE_RANK=${NODE_RANK:-0}
PYTHON=${PYTHON:-python3}
TOOLS_DIR=$(dirname "$0")

set -x
exec "$PYTHON" -u "$TOOLS_DIR/launch.py" \
    --nnodes "$NODES" \
    --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" \
    --master_port "$MASTER_PORT" \
    --nproc_per_node "$GPUS_PER_NODE" \
    "$@"
