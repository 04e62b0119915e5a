"""Distributed helpers: process-group set-up from any launcher, and small collectives.

Works without a process group (one process), under ``tools/launch.py`` / ``torchrun``
(RANK, WORLD_SIZE, LOCAL_RANK) and under SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID).
NCCL is used on GPU, gloo on CPU.
"""
import builtins
import os
import subprocess

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_local_size() -> int:
    return int(os.environ.get("LOCAL_SIZE", torch.cuda.device_count() or 1))


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def save_on_master(*args, **kwargs) -> None:
    if is_main_process():
        torch.save(*args, **kwargs)


def setup_for_distributed(is_master: bool) -> None:
    """Silence ``print`` on every rank but the master (``print(..., force=True)`` still prints)."""
    builtin_print = builtins.print

    def rank_aware_print(*args, **kwargs):
        force = kwargs.pop("force", False)
        if is_master or force:
            builtin_print(*args, **kwargs)

    builtins.print = rank_aware_print


def _slurm_env() -> None:
    """Translate SLURM's variables into the ones torch.distributed reads."""
    proc_id = int(os.environ["SLURM_PROCID"])
    ntasks = int(os.environ["SLURM_NTASKS"])
    node_list = os.environ["SLURM_NODELIST"]
    num_gpus = max(torch.cuda.device_count(), 1)
    master = subprocess.check_output(["scontrol", "show", "hostname", node_list], text=True).split()[0]
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.setdefault("MASTER_ADDR", master)
    os.environ["WORLD_SIZE"] = str(ntasks)
    os.environ["LOCAL_RANK"] = str(proc_id % num_gpus)
    os.environ["LOCAL_SIZE"] = str(num_gpus)
    os.environ["RANK"] = str(proc_id)


def init_distributed_mode(args) -> None:
    """Start the process group if a launcher asked for one; sets args.distributed/rank/world_size/gpu."""
    slurm_job = "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1
    if "RANK" not in os.environ and slurm_job:
        _slurm_env()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        args.distributed = False
        args.rank, args.world_size, args.gpu = 0, 1, 0
        return
    args.rank = int(os.environ["RANK"])
    args.world_size = int(os.environ["WORLD_SIZE"])
    args.gpu = int(os.environ.get("LOCAL_RANK", 0))
    args.distributed = True
    use_cuda = str(args.device).startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(args.gpu)
        args.dist_backend = "nccl"
    else:
        args.dist_backend = "gloo"
    print(f"| distributed init (rank {args.rank}/{args.world_size}, {args.dist_backend})", flush=True)
    dist.init_process_group(backend=args.dist_backend, init_method="env://",
                            world_size=args.world_size, rank=args.rank)
    dist.barrier()
    setup_for_distributed(args.rank == 0)


def all_gather(data) -> list:
    """Gather any picklable object from every rank; returns the list ordered by rank."""
    world_size = get_world_size()
    if world_size == 1:
        return [data]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, data)
    return gathered


def reduce_dict(input_dict: dict, average: bool = True) -> dict:
    """Sum (or average) a dict of scalar tensors over every rank, so every rank logs the same value."""
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names])
        dist.all_reduce(values)
        if average:
            values /= world_size
        return dict(zip(names, values))
