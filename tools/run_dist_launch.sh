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
TOOLS_DIR=$(dirname "$0")
. "$TOOLS_DIR/dist_nodes.sh"
plan_nodes "$GPUS"
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NODE_RANK=${NODE_RANK:-0}
PYTHON=${PYTHON:-python3}

set -x
exec "$PYTHON" -u "$TOOLS_DIR/launch.py" \
    --nnodes "$NODES" \
    --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" \
    --master_port "$MASTER_PORT" \
    --nproc_per_node "$GPUS_PER_NODE" \
    "$@"
