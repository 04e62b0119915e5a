"""Start one process per device on this node, with the environment torch.distributed's env:// reads.

    python tools/launch.py --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 \
        --nproc_per_node 8 ./configs/r50_deformable_detr.sh --batch-size 3

Each child gets MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_SIZE, and torchrun's
LOCAL_WORLD_SIZE and GROUP_RANK. A ``.py`` script runs under this Python interpreter; anything else
(a config shell script) is executed directly. If a child fails, the others are stopped and its exit
status is returned.

The children die with the launcher, however it ends, so that none keeps its GPU: SIGTERM and SIGINT
are forwarded to them (and SIGKILL follows after ``--stop_timeout`` seconds); on Linux the kernel
sends each child SIGTERM when the launcher dies (PR_SET_PDEATHSIG), and a watchdog process stops the
children's process groups (a config script's python included) when the launcher is killed outright.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="spawn distributed training processes on one node")
    p.add_argument("--nnodes", type=int, default=1, help="number of nodes")
    p.add_argument("--node_rank", type=int, default=0, help="rank of this node, 0 .. nnodes-1")
    p.add_argument("--nproc_per_node", type=int, default=1, help="processes (devices) on this node")
    p.add_argument("--master_addr", default="127.0.0.1", help="address of the node with rank 0")
    p.add_argument("--master_port", type=int, default=29500, help="a free port on the master node")
    p.add_argument("--stop_timeout", type=float, default=30.0,
                   help="seconds a stopped child may take to exit (to write a checkpoint, say) "
                        "before it is killed")
    p.add_argument("--use_env", action="store_true",
                   help="accepted for compatibility; the ranks are always passed in the environment")
    p.add_argument("training_script", help="main.py, or an executable config script that runs it")
    p.add_argument("training_script_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.stop_timeout < 0:
        p.error(f"--stop_timeout must be at least 0, got {args.stop_timeout}")
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
        LOCAL_WORLD_SIZE=str(args.nproc_per_node),
        GROUP_RANK=str(args.node_rank),
    )
    if args.nproc_per_node > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Several processes each using every core slow each other down.
        env["OMP_NUM_THREADS"] = "1"
    return env


PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook that asks the kernel for SIGTERM when the launcher dies (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    # Loaded here, not in the forked child, where only async-signal-safe work belongs.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    launcher = os.getpid()

    def hook() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != launcher:  # the launcher died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _signal_groups(pgids: list[int], signum: int) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _any_group_alive(pgids: list[int]) -> bool:
    alive = False
    for pgid in pgids:
        try:
            os.killpg(pgid, 0)
            alive = True
        except (ProcessLookupError, PermissionError):
            pass
    return alive


def stop_groups(pgids: list[int], timeout: float) -> None:
    """SIGTERM to each process group; SIGKILL to what is left after ``timeout`` seconds."""
    _signal_groups(pgids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _any_group_alive(pgids) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_groups(pgids, signal.SIGKILL)


def start_watchdog(pgids: list[int], timeout: float) -> int:
    """Fork a process that stops ``pgids`` if the launcher dies; returns the fd that keeps it waiting.

    Writing one byte to the fd before closing it says that the launcher ends normally. The kernel
    closes the fd when the launcher is killed, and the watchdog sees end-of-file without the byte.
    PR_SET_PDEATHSIG alone reaches only the direct children, not the python a config script starts.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(write_end)
            os.setsid()  # outlives a kill of the launcher's process group
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # hold none of the launcher's pipes open
                os.dup2(devnull, fd)
            if os.read(read_end, 1) != b"x":
                stop_groups(pgids, timeout)
        finally:
            os._exit(0)
    os.close(read_end)
    return write_end


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cmd = child_command(args.training_script, args.training_script_args)
    # Each child leads its own process group, so that stopping it also stops what it started
    # (a config script's python, data-loader workers).
    procs = [subprocess.Popen(cmd, env=child_env(args, r), start_new_session=True,
                              preexec_fn=_parent_death_signal())
             for r in range(args.nproc_per_node)]
    pgids = [p.pid for p in procs]
    watchdog = start_watchdog(pgids, args.stop_timeout)
    kill_at = None

    def stop_all(signum: int = signal.SIGTERM, frame=None) -> None:
        nonlocal kill_at
        _signal_groups(pgids, signum)
        if kill_at is None:
            kill_at = time.monotonic() + args.stop_timeout

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
        if kill_at is not None and time.monotonic() > kill_at:
            left = [i for i, p in enumerate(procs) if p.poll() is None]
            print(f"launch.py: process(es) {left} did not stop within --stop_timeout "
                  f"{args.stop_timeout:g} s; killing them", file=sys.stderr, flush=True)
            _signal_groups(pgids, signal.SIGKILL)
            kill_at = float("inf")
        time.sleep(0.2)
    os.write(watchdog, b"x")
    os.close(watchdog)
    if status == 0:
        status = next((p.returncode for p in procs if p.returncode != 0), 0)
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
