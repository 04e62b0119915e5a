# Sourced by run_dist_launch.sh and run_dist_slurm.sh (POSIX sh): plan_nodes <total gpus> checks the
# count and sets GPUS_PER_NODE (default 8, or the total when smaller) and NODES.

# require_positive_int <name> <value>: stop unless value is a positive integer.
require_positive_int() {
    case "$2" in
        ''|*[!0-9]*) echo "$0: $1 must be a positive integer, got '$2'" >&2; exit 2 ;;
    esac
    if [ "$2" -lt 1 ]; then
        echo "$0: $1 must be a positive integer, got '$2'" >&2; exit 2
    fi
}

plan_nodes() {
    require_positive_int "the number of GPUs" "$1"
    if [ "$1" -lt 8 ]; then
        GPUS_PER_NODE=${GPUS_PER_NODE:-$1}
    else
        GPUS_PER_NODE=${GPUS_PER_NODE:-8}
    fi
    require_positive_int GPUS_PER_NODE "$GPUS_PER_NODE"
    if [ "$GPUS_PER_NODE" -gt "$1" ]; then
        GPUS_PER_NODE=$1
    fi
    # Every node runs GPUS_PER_NODE processes: rounding up would start a larger world than asked for,
    # and --cache_mode needs full nodes.
    if [ $(( $1 % GPUS_PER_NODE )) -ne 0 ]; then
        echo "$0: $1 GPUs is not a multiple of GPUS_PER_NODE=$GPUS_PER_NODE (every node runs that many" \
            "processes); use a multiple, or set GPUS_PER_NODE" >&2
        exit 2
    fi
    NODES=$(( $1 / GPUS_PER_NODE ))
}
