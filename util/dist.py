"""Distributed helpers: where this process sits in the job, process-group set-up, and every collective.

Works without a process group (one process), under ``tools/launch.py`` / ``torchrun``
(RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE or LOCAL_SIZE, GROUP_RANK) and under SLURM
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE).
NCCL is used on GPU, gloo on CPU.

Every collective of the code base goes through this module (a test checks that no other module calls
``torch.distributed`` collectives): NCCL takes CUDA tensors only and gloo is happiest with CPU ones, so
the functions here move their tensors to the device the process group's backend requires and hand
the results back on the caller's device. A CPU test with gloo cannot see a CPU tensor handed to NCCL;
keeping the placement in one place makes that mistake impossible elsewhere.
"""
from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def setup_for_distributed(is_master: bool) -> None:
    """Silence ``print`` on every rank but the master (``print(..., force=True)`` still prints)."""
    builtin_print = builtins.print

    def rank_aware_print(*args, **kwargs):
        force = kwargs.pop("force", False)
        if is_master or force:
            builtin_print(*args, **kwargs)

    builtins.print = rank_aware_print


# ----------------------------------------------------------------------------------------------
# Where this process sits: read from the launcher's environment, never guessed from the GPU count.


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the job as its launcher describes it.

    ``local_size`` (processes on this node) is None when the launcher does not say; ``node_rank``
    is the index of this node, 0 .. nodes - 1.
    """

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_size: int | None
    node_rank: int


def parse_slurm_tasks_per_node(value: str, node_id: int = 0) -> int:
    """Tasks on node ``node_id`` from SLURM's compressed list: ``"4"``, ``"4(x2)"``, ``"4(x2),3"``."""
    counts: list[int] = []
    for item in value.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:\(x(\d+)\))?\s*", item)
        if m is None:
            raise ValueError(f"cannot read the tasks per node from SLURM's value {value!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    # SLURM_NTASKS_PER_NODE (one number) holds for every node.
    return counts[0] if len(counts) == 1 else counts[node_id]


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _slurm_local_size(env: Mapping[str, str]) -> int | None:
    node_id = _int_env(env, "SLURM_NODEID") or 0
    for name in ("SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if env.get(name):
            return parse_slurm_tasks_per_node(env[name], node_id)
    return None


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """The launcher's description of this process, or None for a single process.

    RANK/WORLD_SIZE (``tools/launch.py``, ``torchrun``) take precedence over SLURM's variables, so
    that ``torchrun`` inside a SLURM allocation works; a SLURM step with one task is a single process.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world_size = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")
        local_rank = _int_env(env, "LOCAL_RANK")
        if local_rank is None:
            local_rank = 0 if world_size == 1 else _int_env(env, "SLURM_LOCALID")
        if local_rank is None:
            raise ValueError("RANK and WORLD_SIZE are set but LOCAL_RANK is not: start the processes with "
                             "tools/launch.py, torchrun or srun")
        local_size = _int_env(env, "LOCAL_WORLD_SIZE") or _int_env(env, "LOCAL_SIZE")
        if local_size is None:
            local_size = 1 if world_size == 1 else _slurm_local_size(env)
        node_rank = _int_env(env, "GROUP_RANK")
        launcher = "torchrun/launch.py"
    elif "SLURM_PROCID" in env and (_int_env(env, "SLURM_NTASKS") or 1) > 1:
        rank, world_size = _int_env(env, "SLURM_PROCID"), _int_env(env, "SLURM_NTASKS")
        local_rank = _int_env(env, "SLURM_LOCALID")
        if local_rank is None:
            raise ValueError("SLURM_PROCID is set but SLURM_LOCALID is not: start the tasks with srun")
        local_size = _slurm_local_size(env)
        node_rank = _int_env(env, "SLURM_NODEID")
        launcher = "slurm"
    else:
        return None
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size}) ({launcher} environment)")
    if local_size is not None and not 0 <= local_rank < local_size:
        raise ValueError(f"local rank {local_rank} is outside [0, {local_size}) ({launcher} environment)")
    if node_rank is None:
        # Launchers that do not name the node place ranks node by node.
        node_rank = rank // local_size if local_size else 0
    return LaunchEnv(launcher, rank, world_size, local_rank, local_size, node_rank)


def get_local_rank() -> int:
    """Index of this process among those of its node (its GPU), from the launcher's environment."""
    env = launch_env()
    return env.local_rank if env is not None else 0


def get_local_size() -> int:
    """Processes on this node, from the launcher's environment (``--cache_mode`` shards by it)."""
    env = launch_env()
    if env is None:
        return 1
    if env.local_size is None:
        raise RuntimeError("the number of processes on this node is unknown: set LOCAL_WORLD_SIZE (torchrun "
                           "sets it) or LOCAL_SIZE (tools/launch.py sets it) in every process's environment")
    return env.local_size


def get_node_rank() -> int:
    """Index of this process's node, from the launcher's environment (SLURM_NODEID, GROUP_RANK)."""
    env = launch_env()
    return env.node_rank if env is not None else 0


def _slurm_env(env: LaunchEnv) -> None:
    """Export what torch.distributed's env:// reads, and the ranks, for this process and its children."""
    os.environ.setdefault("MASTER_PORT", "29500")
    if "MASTER_ADDR" not in os.environ:  # the first node of the allocation
        try:
            hosts = subprocess.check_output(["scontrol", "show", "hostname", os.environ["SLURM_NODELIST"]],
                                            text=True).split()
        except (OSError, KeyError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"main.py: under SLURM the master's address comes from `scontrol show hostname "
                             f"$SLURM_NODELIST`, which failed ({e}); set MASTER_ADDR") from None
        os.environ["MASTER_ADDR"] = hosts[0]
    os.environ["WORLD_SIZE"] = str(env.world_size)
    os.environ["RANK"] = str(env.rank)
    os.environ["LOCAL_RANK"] = str(env.local_rank)
    os.environ["GROUP_RANK"] = str(env.node_rank)
    if env.local_size is not None:
        os.environ["LOCAL_SIZE"] = os.environ["LOCAL_WORLD_SIZE"] = str(env.local_size)


def init_distributed_mode(args) -> None:
    """Start the process group if a launcher asked for one; sets args.distributed/rank/world_size/gpu."""
    try:
        env = launch_env()
    except ValueError as e:
        raise SystemExit(f"main.py: distributed launch: {e}") from None
    if env is None:
        args.distributed = False
        args.rank, args.world_size, args.gpu = 0, 1, 0
        return
    if env.launcher == "slurm":
        _slurm_env(env)
    if getattr(args, "cache_mode", False) and env.local_size is None:
        raise SystemExit("main.py: --cache_mode shards the images by the processes of a node, but the "
                         "launcher did not say how many there are: set LOCAL_WORLD_SIZE or LOCAL_SIZE")
    args.rank, args.world_size, args.gpu = env.rank, env.world_size, env.local_rank
    args.distributed = True
    use_cuda = str(args.device).startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        index = torch.device(args.device).index
        if index is not None and index != env.local_rank:
            # DDP would find the model on another GPU than the one of this rank's local rank.
            print(f"main.py: error: --device {args.device}: each process of a distributed run uses the GPU "
                  f"of its local rank ({env.local_rank} here); pass --device cuda",
                  file=sys.stderr, flush=True)
            raise SystemExit(2)
        n_gpus = torch.cuda.device_count()
        if env.local_rank >= n_gpus:
            raise SystemExit(f"main.py: process {env.rank} has local rank {env.local_rank} but this node "
                             f"shows {n_gpus} GPU(s): start at most {n_gpus} processes per node")
        # Before the first collective: NCCL and collective_device() use the current device.
        torch.cuda.set_device(env.local_rank)
        args.dist_backend = "nccl"
    else:
        args.dist_backend = "gloo"
    print(f"| distributed init (rank {args.rank}/{args.world_size}, {args.dist_backend})", flush=True)
    dist.init_process_group(backend=args.dist_backend, init_method="env://",
                            world_size=args.world_size, rank=args.rank)
    barrier()
    setup_for_distributed(args.rank == 0)


# ----------------------------------------------------------------------------------------------
# Collectives. Each returns at once without a process group or with one process.


def _backend_device_types(group=None) -> set[str]:
    """Device types the group's backend takes tensors on, e.g. {'cuda'} for NCCL."""
    get_config = getattr(dist, "get_backend_config", None)
    config = str(get_config(group) if get_config is not None else dist.get_backend(group))
    if ":" in config:  # "cpu:gloo,cuda:nccl"
        return {part.split(":", 1)[0].strip() for part in config.split(",")}
    return {"cuda"} if config == "nccl" else {"cpu", "cuda"}


def placement(device: torch.device | None, supported: set[str],
              cuda_index: int | None = None) -> torch.device:
    """Where a collective must run: the current GPU for a backend that takes only CUDA tensors (NCCL),
    else ``device`` if the backend takes it, else the CPU.

    ``device`` is the caller's tensor's device (None for pickled objects, which prefer the CPU);
    ``supported`` the backend's device types; ``cuda_index`` the current CUDA device (read when needed).
    NCCL keeps one communicator per GPU: a tensor on another GPU than the current one would pair
    this rank with a communicator the other ranks do not use.
    """
    if "cuda" in supported and "cpu" not in supported:
        return torch.device("cuda", torch.cuda.current_device() if cuda_index is None else cuda_index)
    if device is not None and device.type in supported:
        return device
    if "cpu" in supported:
        return torch.device("cpu")
    raise RuntimeError(f"no device for a collective: the process group takes tensors on {sorted(supported)}")


def collective_device(device: torch.device | None = None, group=None) -> torch.device:
    """The device a collective on a tensor from ``device`` runs on, under the current process group."""
    return placement(device, _backend_device_types(group))


def _active(group=None) -> bool:
    return is_dist_avail_and_initialized() and dist.get_world_size(group) > 1


def all_reduce(tensor: torch.Tensor, op=None, group=None) -> torch.Tensor:
    """Reduce ``tensor`` in place over every rank (sum by default); returns it, on its own device."""
    if not _active(group):
        return tensor
    op = dist.ReduceOp.SUM if op is None else op
    device = collective_device(tensor.device, group)
    if device == tensor.device:
        dist.all_reduce(tensor, op=op, group=group)
        return tensor
    moved = tensor.to(device)
    dist.all_reduce(moved, op=op, group=group)
    tensor.copy_(moved)
    return tensor


def barrier(group=None) -> None:
    """Wait for every rank. A one-element all-reduce on the backend's device: NCCL's own barrier
    picks its GPU by guessing from the rank, which is wrong when ranks are not laid out node by node."""
    if _active(group):
        flag = torch.zeros(1, device=collective_device(None, group))
        dist.all_reduce(flag, group=group)


def _to_bytes(obj: Any) -> bytes:
    # torch.save writes tensors with their data, from any device, and torch.load with
    # map_location='cpu' never touches a GPU: a rank receives no tensor on another rank's GPU.
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    return buf.getvalue()


def _from_bytes(data: bytes) -> Any:
    # Our own ranks' objects (evaluator results), not a file from elsewhere: full unpickling.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def all_gather(data: Any, group=None) -> list:
    """Gather any picklable object from every rank; returns the list ordered by rank.

    Tensors inside the objects come back on the CPU, whichever device they were sent from.
    """
    if not _active(group):
        return [data]
    world_size = dist.get_world_size(group)
    device = collective_device(None, group)
    payload = torch.frombuffer(bytearray(_to_bytes(data)), dtype=torch.uint8).to(device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    sizes_cpu = [int(s.item()) for s in sizes]
    longest = max(sizes_cpu)
    # all_gather needs equal shapes: pad every payload to the longest.
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    received = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(received, padded, group=group)
    return [_from_bytes(r[:n].cpu().numpy().tobytes()) for r, n in zip(received, sizes_cpu)]


def broadcast_object(obj: Any, src: int = 0, group=None) -> Any:
    """Rank ``src``'s ``obj`` on every rank (tensors inside come back on the CPU)."""
    if not _active(group):
        return obj
    device = collective_device(None, group)
    data = _to_bytes(obj) if get_rank() == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=src, group=group)
    payload = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if get_rank() == src:
        payload.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(payload, src=src, group=group)
    return obj if get_rank() == src else _from_bytes(payload.cpu().numpy().tobytes())


def reduce_dict(input_dict: dict, average: bool = True) -> dict:
    """Sum (or average) a dict of scalar tensors over every rank, so every rank logs the same value."""
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names])
        all_reduce(values)
        if average:
            values /= world_size
        return dict(zip(names, values))


class _AllGatherRows(torch.autograd.Function):
    """Concatenate every rank's rows (rank order); backward sums all ranks' gradients, then slices.

    Rank k's loss depends on the rows of rank r through the gathered tensor, so the gradient of the
    job's total loss with respect to rank r's rows is the sum over k of rank k's gradient of its
    gathered tensor at r's slice. Keeping only the local gradient (``grads[rank]``) drops every
    other rank's contribution.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        device = collective_device(tensor.device, group)
        moved = tensor.detach().to(device).contiguous()
        counts = torch.zeros(dist.get_world_size(group), dtype=torch.int64, device=device)
        counts[dist.get_rank(group)] = moved.shape[0]
        dist.all_reduce(counts, group=group)
        counts_list = [int(c) for c in counts.tolist()]
        longest = max(counts_list)
        # all_gather needs equal shapes: pad every rank's rows to the longest.
        padded = moved.new_zeros((longest, *moved.shape[1:]))
        padded[: moved.shape[0]] = moved
        received = [torch.empty_like(padded) for _ in counts_list]
        dist.all_gather(received, padded, group=group)
        ctx.group, ctx.counts, ctx.source = group, counts_list, tensor.device
        return torch.cat([r[:n] for r, n in zip(received, counts_list)]).to(tensor.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        counts, group = ctx.counts, ctx.group
        device = collective_device(grad.device, group)
        longest = max(counts)
        padded = grad.new_zeros((len(counts), longest, *grad.shape[1:]), device=device)
        for k, rows in enumerate(grad.to(device).split(counts)):
            padded[k, : counts[k]] = rows
        dist.all_reduce(padded, group=group)  # sum over ranks
        rank = dist.get_rank(group)
        return padded[rank, : counts[rank]].to(ctx.source), None


def all_gather_rows(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """(n_r, ...) on each rank r -> (sum_r n_r, ...): every rank's rows in rank order, differentiable.

    The row counts may differ between ranks; the other dimensions, dtype and device type must not.
    In backward each rank receives the sum of every rank's gradient at its own rows (one all-reduce of
    the whole gathered gradient). Without a process group, or with one process, returns ``tensor``.
    """
    if not _active(group):
        return tensor
    return _AllGatherRows.apply(tensor, group)


def max_over_ranks(values: tuple[int, ...], group=None) -> tuple[int, ...]:
    """Element-wise maximum of a tuple of integers (an image size) over every rank."""
    if not _active(group):
        return tuple(values)
    t = torch.tensor(list(values), dtype=torch.int64, device=collective_device(None, group))
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return tuple(int(v) for v in t.tolist())
