"""util.dist: the launcher's environment, and collectives placed on the device the backend requires.

This machine has no GPU, so NCCL's refusal of CPU tensors is reproduced with a process group whose
only backend is registered for the ``cuda`` device type (``cuda:gloo``): it refuses CPU tensors with
the same error NCCL gives ("No backend type associated with device type cpu").
"""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import util.dist as du
from util.logger import SmoothedValue

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                 "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS_PER_NODE",
                 "SLURM_TASKS_PER_NODE")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    """Tests see only the launcher variables they set (the CI job may itself run under SLURM), and
    what the code under test exports into os.environ is undone afterwards."""
    for name in (*LAUNCHER_VARS, "SLURM_NODELIST", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # records the value to restore, absent included
        monkeypatch.delenv(name)


@pytest.fixture
def one_process_group(tmp_path, request):
    dist.init_process_group(request.param, init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield request.param
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Device placement


def test_placement_follows_the_backend():
    cpu, gpu1 = torch.device("cpu"), torch.device("cuda", 1)
    assert du.placement(cpu, {"cuda"}, cuda_index=2) == torch.device("cuda", 2)  # NCCL
    assert du.placement(None, {"cuda"}, cuda_index=0) == torch.device("cuda", 0)
    assert du.placement(gpu1, {"cuda"}, cuda_index=1) == gpu1  # already where NCCL wants it
    assert du.placement(gpu1, {"cuda"}, cuda_index=0) == torch.device("cuda", 0)  # NCCL's communicator
    assert du.placement(cpu, {"cpu", "cuda"}) == cpu  # gloo
    assert du.placement(gpu1, {"cpu", "cuda"}) == gpu1  # gloo takes CUDA tensors too
    assert du.placement(gpu1, {"cpu"}) == cpu
    assert du.placement(None, {"cpu", "cuda"}) == cpu
    with pytest.raises(RuntimeError, match="takes tensors on"):
        du.placement(cpu, {"xpu"})


@pytest.mark.parametrize("one_process_group", ["cuda:gloo"], indirect=True)
def test_collective_device_is_the_current_gpu_when_the_backend_takes_only_cuda(one_process_group,
                                                                               monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert du.collective_device(torch.device("cpu")) == torch.device("cuda", 3)
    assert du.collective_device(None) == torch.device("cuda", 3)
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        dist.all_reduce(torch.zeros(1))  # what NCCL does with a CPU tensor


@pytest.mark.parametrize("one_process_group", ["gloo"], indirect=True)
def test_collective_device_is_the_cpu_under_gloo(one_process_group):
    assert du.collective_device(torch.device("cpu")) == torch.device("cpu")
    assert du.collective_device(None) == torch.device("cpu")


@pytest.mark.parametrize("one_process_group", ["cuda:gloo"], indirect=True)
def test_one_process_under_a_cuda_only_backend(one_process_group):
    """``torchrun --nproc_per_node 1`` with NCCL: the end of every epoch and of --eval."""
    meter = SmoothedValue()
    for v in (1.0, 2.0, 6.0):
        meter.update(v)
    meter.synchronize_between_processes()
    assert (meter.count, meter.total) == (3, 9.0)
    losses = du.reduce_dict({"loss": torch.tensor(2.0), "loss_ce": torch.tensor(0.5)})
    assert {k: v.item() for k, v in losses.items()} == {"loss": 2.0, "loss_ce": 0.5}
    assert du.all_gather({"ids": [1, 2]}) == [{"ids": [1, 2]}]
    assert du.broadcast_object("x") == "x"
    du.barrier()
    t = torch.ones(2)
    assert du.all_reduce(t) is t and t.tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# Two processes


def _as_if_saved_on_gpu(obj):
    """Run ``du.all_gather(obj)`` with every storage recorded on cuda:0, as a GPU rank's would be."""
    import torch.serialization as ts

    real = ts.location_tag
    ts.location_tag = lambda storage: "cuda:0"
    try:
        return du.all_gather(obj)
    finally:
        ts.location_tag = real


def _two_rank_worker(rank: int, store: str, backend: str) -> None:
    device = torch.device("cpu")
    if backend.startswith("cuda") or backend == "nccl":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)  # before the group, as init_distributed_mode does
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        meter = SmoothedValue(window_size=5)
        for _ in range(rank + 1):  # rank 0: 1 x (1, n=2); rank 1: 2 x (2, n=2)
            meter.update(float(rank + 1), n=2)
        meter.synchronize_between_processes()
        assert (meter.count, meter.total) == (6, 2.0 + 8.0), (meter.count, meter.total)
        assert list(meter.deque) == [float(rank + 1)] * (rank + 1)  # the window stays local

        losses = du.reduce_dict({"b": torch.tensor(2.0 * rank, device=device),
                                 "a": torch.tensor(float(rank), device=device)})
        assert {k: v.item() for k, v in losses.items()} == {"a": 0.5, "b": 1.0}
        assert all(v.device == device for v in losses.values())

        t = torch.tensor([rank, 10], device=device)
        assert du.all_reduce(t) is t and t.tolist() == [1, 20] and t.device == device

        # Different sizes per rank; rank 1's tensor is recorded on a GPU: every rank gets it on the CPU.
        obj = {"rank": rank, "blob": "x" * (1000 * rank), "t": torch.arange(3) + rank}
        got = _as_if_saved_on_gpu(obj) if rank == 1 else du.all_gather(obj)
        assert [g["rank"] for g in got] == [0, 1]
        assert [len(g["blob"]) for g in got] == [0, 1000]
        assert [g["t"].tolist() for g in got] == [[0, 1, 2], [1, 2, 3]]
        assert all(g["t"].device.type == "cpu" for g in got)

        assert du.broadcast_object({"from": rank}, src=1) == {"from": 1}
        du.barrier()
    finally:
        dist.destroy_process_group()


def _spawn_two(backend: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_two_rank_worker, args=(os.path.join(d, "store"), backend), nprocs=2, join=True)


def test_two_processes_gloo_global_counts_and_objects():
    _spawn_two("gloo")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_two_processes_cuda_only_gloo():
    # Two ranks may share one GPU under gloo; the backend takes CUDA tensors only, as NCCL does.
    _spawn_two("cuda:gloo")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_processes_nccl():
    _spawn_two("nccl")


# ---------------------------------------------------------------------------------------------
# The launcher's environment


@pytest.mark.parametrize("value,node,expected", [("4", 0, 4), ("4", 3, 4), ("4(x2)", 1, 4),
                                                 ("4(x2),3", 2, 3), ("8", 0, 8), ("2,6", 1, 6)])
def test_parse_slurm_tasks_per_node(value, node, expected):
    assert du.parse_slurm_tasks_per_node(value, node) == expected


def test_parse_slurm_tasks_per_node_rejects_garbage():
    with pytest.raises(ValueError, match="tasks per node"):
        du.parse_slurm_tasks_per_node("four", 0)


def test_torchrun_local_world_size_wins_over_the_gpu_count(monkeypatch):
    # torchrun --nnodes 2 --nproc_per_node 4 on 8-GPU nodes: rank 5 is local rank 1 of 4 on node 1.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for k, v in dict(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1", LOCAL_WORLD_SIZE="4", GROUP_RANK="1").items():
        monkeypatch.setenv(k, v)
    assert (du.get_local_rank(), du.get_local_size(), du.get_node_rank()) == (1, 4, 1)


def test_slurm_cyclic_uses_slurm_localid(monkeypatch):
    # srun -n 8 --ntasks-per-node 4 --distribution cyclic on two nodes: task 5 is on node 1, local id 2.
    for k, v in dict(SLURM_PROCID="5", SLURM_NTASKS="8", SLURM_LOCALID="2", SLURM_NODEID="1",
                     SLURM_NTASKS_PER_NODE="4", SLURM_TASKS_PER_NODE="4(x2)").items():
        monkeypatch.setenv(k, v)
    assert (du.get_local_rank(), du.get_local_size(), du.get_node_rank()) == (2, 4, 1)
    env = du.launch_env()
    assert (env.launcher, env.rank, env.world_size) == ("slurm", 5, 8)


def test_slurm_without_ntasks_per_node_reads_tasks_per_node(monkeypatch):
    for k, v in dict(SLURM_PROCID="4", SLURM_NTASKS="7", SLURM_LOCALID="0", SLURM_NODEID="1",
                     SLURM_TASKS_PER_NODE="4,3").items():
        monkeypatch.setenv(k, v)
    assert (du.get_local_rank(), du.get_local_size()) == (0, 3)


def test_single_slurm_task_is_not_distributed(monkeypatch):
    for k, v in dict(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0").items():
        monkeypatch.setenv(k, v)
    assert du.launch_env() is None
    assert (du.get_local_rank(), du.get_local_size()) == (0, 1)


def test_unknown_local_size_is_an_error_not_a_guess(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for k, v in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(RuntimeError, match="LOCAL_WORLD_SIZE"):
        du.get_local_size()


def test_local_rank_outside_local_size_is_reported(monkeypatch):
    for k, v in dict(RANK="4", WORLD_SIZE="8", LOCAL_RANK="4", LOCAL_WORLD_SIZE="4").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=r"local rank 4 is outside \[0, 4\)"):
        du.launch_env()


def _args(**kw):
    import argparse

    return argparse.Namespace(**{"device": "cuda", "cache_mode": False, **kw})


def test_init_rejects_more_processes_than_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device must not be reached"))
    for k, v in dict(RANK="2", WORLD_SIZE="4", LOCAL_RANK="2", LOCAL_WORLD_SIZE="4").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit, match="local rank 2 but this node shows 2 GPU"):
        du.init_distributed_mode(_args())


def test_init_cache_mode_needs_the_local_size(monkeypatch):
    for k, v in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit, match="--cache_mode .* LOCAL_WORLD_SIZE"):
        du.init_distributed_mode(_args(device="cpu", cache_mode=True))


def test_init_without_a_launcher_is_a_single_process():
    args = _args(device="cpu")
    du.init_distributed_mode(args)
    assert (args.distributed, args.rank, args.world_size, args.gpu) == (False, 0, 1, 0)


def test_slurm_exports_the_ranks_for_env_init(monkeypatch, tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$3" = "node[3-4]" ] && printf "node3\\nnode4\\n"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    for k, v in dict(SLURM_PROCID="3", SLURM_NTASKS="8", SLURM_LOCALID="1", SLURM_NODEID="1",
                     SLURM_NTASKS_PER_NODE="4", SLURM_NODELIST="node[3-4]").items():
        monkeypatch.setenv(k, v)
    du._slurm_env(du.launch_env())
    assert {k: os.environ[k] for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                       "GROUP_RANK")} == dict(MASTER_ADDR="node3", RANK="3", WORLD_SIZE="8",
                                                              LOCAL_RANK="1", LOCAL_WORLD_SIZE="4",
                                                              GROUP_RANK="1")
    # The exported variables describe the same process (torchrun-style precedence).
    assert du.launch_env().local_rank == 1 and du.launch_env().node_rank == 1
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    with pytest.raises(SystemExit, match="set MASTER_ADDR"):
        du._slurm_env(du.launch_env())


def test_init_rejects_a_fixed_gpu_index(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device must not be reached"))
    for k, v in dict(RANK="1", WORLD_SIZE="8", LOCAL_RANK="1", LOCAL_WORLD_SIZE="8").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        du.init_distributed_mode(_args(device="cuda:0"))
    assert e.value.code == 2
    assert "main.py: error: --device cuda:0" in capsys.readouterr().err
