"""Start one process per device on this node, with the environment torch.distributed's env:// reads.

    python tools/launch.py --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 \
        --nproc_per_node 8 ./configs/r50_deformable_detr.sh --batch-size 3

Each child gets MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_SIZE. A ``.py``
script runs under this Python interpreter; anything else (a config shell script) is executed
directly. If a child fails, the others are stopped and its exit status is returned.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="spawn distributed training processes on one node")
    p.add_argument("--nnodes", type=int, default=1, help="number of nodes")
    p.add_argument("--node_rank", type=int, default=0, help="rank of this node, 0 .. nnodes-1")
    p.add_argument("--nproc_per_node", type=int, default=1, help="processes (devices) on this node")
    p.add_argument("--master_addr", default="127.0.0.1", help="address of the node with rank 0")
    p.add_argument("--master_port", type=int, default=29500, help="a free port on the master node")
    p.add_argument("--use_env", action="store_true",
                   help="accepted for compatibility; the ranks are always passed in the environment")
    p.add_argument("training_script", help="main.py, or an executable config script that runs it")
    p.add_argument("training_script_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.nnodes < 1 or args.nproc_per_node < 1:
        p.error("--nnodes and --nproc_per_node must be at least 1")
    if not 0 <= args.node_rank < args.nnodes:
        p.error(f"--node_rank {args.node_rank} must be in [0, {args.nnodes - 1}]")
    if not os.path.exists(args.training_script):
        p.error(f"training script not found: {args.training_script}")
    return args


def child_command(script: str, script_args: list[str]) -> list[str]:
    if script.endswith(".py"):
        return [sys.executable, "-u", script, *script_args]
    if not os.access(script, os.X_OK):
        raise SystemExit(f"{script} is not executable (chmod +x it, or pass a .py script)")
    return [os.path.abspath(script) if os.sep not in script else script, *script_args]


def child_env(args: argparse.Namespace, local_rank: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MASTER_ADDR=args.master_addr,
        MASTER_PORT=str(args.master_port),
        WORLD_SIZE=str(args.nnodes * args.nproc_per_node),
        RANK=str(args.node_rank * args.nproc_per_node + local_rank),
        LOCAL_RANK=str(local_rank),
        LOCAL_SIZE=str(args.nproc_per_node),
    )
    if args.nproc_per_node > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Several processes each using every core slow each other down.
        env["OMP_NUM_THREADS"] = "1"
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cmd = child_command(args.training_script, args.training_script_args)
    # Each child leads its own process group, so that stopping it also stops what it started
    # (a config script's python, data-loader workers).
    procs = [subprocess.Popen(cmd, env=child_env(args, r), start_new_session=True)
             for r in range(args.nproc_per_node)]

    def stop_all(signum=signal.SIGTERM, frame=None) -> None:
        for p in procs:
            try:
                os.killpg(p.pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    status = 0
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.poll() not in (None, 0)]
        if failed and status == 0:
            status = failed[0].returncode
            print(f"launch.py: process {procs.index(failed[0])} exited with status {status}; "
                  "stopping the others", file=sys.stderr, flush=True)
            stop_all()
        time.sleep(0.2)
    if status == 0:
        status = next((p.returncode for p in procs if p.returncode != 0), 0)
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
