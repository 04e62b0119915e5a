import importlib.util
import os
from collections import Counter

import pytest
import torch

from datasets import samplers
from datasets.samplers import DistributedSampler, NodeDistributedSampler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                 "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS_PER_NODE",
                 "SLURM_TASKS_PER_NODE")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    """Tests see only the launcher variables they set (the CI job may itself run under SLURM)."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("n,world", [(10, 3), (9, 3), (2, 4)])
def test_distributed_sampler_covers_and_pads(n, world):
    data = list(range(n))
    samplers = [DistributedSampler(data, num_replicas=world, rank=r) for r in range(world)]
    shards = [list(s) for s in samplers]
    assert all(len(s) == len(sm) == -(-n // world) for s, sm in zip(shards, samplers))
    assert set().union(*map(set, shards)) == set(data)
    assert sum(len(s) for s in shards) - n == -(-n // world) * world - n  # only padding repeats


def test_distributed_sampler_shuffles_by_epoch_identically_on_every_rank():
    a, b = DistributedSampler(range(50), 2, 0), DistributedSampler(range(50), 2, 0)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) != first
    unshuffled = DistributedSampler(range(6), 2, 1, shuffle=False)
    assert list(unshuffled) == [3, 4, 5]


@pytest.mark.parametrize("n", [20, 23])
def test_node_sampler_stays_in_the_local_shard(n):
    world, local_size = 4, 2  # two nodes of two processes
    shards = {}
    for rank in range(world):
        s = NodeDistributedSampler(range(n), num_replicas=world, rank=rank,
                                   local_rank=rank % local_size, local_size=local_size)
        s.set_epoch(3)
        shards[rank] = list(s)
        assert len(shards[rank]) == len(s)
        assert all(i % local_size == rank % local_size for i in shards[rank])
    assert set().union(*map(set, shards.values())) == set(range(n))
    # same local rank on the two nodes: disjoint except for padding
    assert len(set(shards[0]) & set(shards[2])) <= 1


def test_node_sampler_needs_full_nodes():
    with pytest.raises(ValueError, match="multiple"):
        NodeDistributedSampler(range(10), num_replicas=3, rank=0, local_rank=0, local_size=2)


def test_distributed_sampler_gives_contiguous_chunks_padded_by_the_head():
    # As the public sampler: rank r takes entries [r * n, (r + 1) * n) of the (shuffled) order.
    shards = [list(DistributedSampler(range(10), 3, r, shuffle=False)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    s = [DistributedSampler(range(10), 3, r, shuffle=True, seed=5) for r in range(3)]
    for x in s:
        x.set_epoch(2)
    g = torch.Generator()
    g.manual_seed(5 + 2)
    order = torch.randperm(10, generator=g).tolist()
    assert sum((list(x) for x in s), []) == order + order[:2]


def test_node_sampler_gives_contiguous_chunks_of_the_local_shard():
    # 2 nodes x 2 processes, 20 images: local rank 0 caches the even indices, node n takes chunk n.
    shards = [list(NodeDistributedSampler(range(20), 4, r, local_rank=r % 2, local_size=2, shuffle=False))
              for r in range(4)]
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9], [10, 12, 14, 16, 18], [11, 13, 15, 17, 19]]


# Environments of 2 nodes x 4 processes on 8-GPU nodes, as each launcher sets them: rank -> variables.
def _launch_py_env(rank: int) -> dict:
    spec = importlib.util.spec_from_file_location("launch", os.path.join(ROOT, "tools", "launch.py"))
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    args = launch.parse_args(["--nnodes", "2", "--node_rank", str(rank // 4), "--nproc_per_node", "4",
                              os.path.join(ROOT, "main.py")])
    env = launch.child_env(args, rank % 4)
    return {k: v for k, v in env.items() if k in LAUNCHER_VARS}


def _torchrun_env(rank: int) -> dict:
    return dict(RANK=str(rank), WORLD_SIZE="8", LOCAL_RANK=str(rank % 4), LOCAL_WORLD_SIZE="4",
                GROUP_RANK=str(rank // 4))


def _slurm_env(rank: int, cyclic: bool, ntasks_per_node: bool = True) -> dict:
    node, local = (rank % 2, rank // 2) if cyclic else (rank // 4, rank % 4)
    env = dict(SLURM_PROCID=str(rank), SLURM_NTASKS="8", SLURM_LOCALID=str(local), SLURM_NODEID=str(node),
               SLURM_TASKS_PER_NODE="4(x2)")
    if ntasks_per_node:
        env["SLURM_NTASKS_PER_NODE"] = "4"
    return env


LAUNCHERS = {
    "launch.py": lambda r: (_launch_py_env(r), r // 4),
    "torchrun": lambda r: (_torchrun_env(r), r // 4),
    "slurm-block": lambda r: (_slurm_env(r, cyclic=False), r // 4),
    "slurm-cyclic": lambda r: (_slurm_env(r, cyclic=True), r % 2),
    "slurm-tasks-per-node": lambda r: (_slurm_env(r, cyclic=True, ntasks_per_node=False), r % 2),
}


@pytest.mark.parametrize("n", [64, 61])
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_every_launcher_covers_the_data_set_once(monkeypatch, launcher, n):
    """Each of 8 ranks builds its samplers from its own environment (the process group gives rank
    and world size): one GPU per rank on each node, and together the ranks see every image once
    (plus the padding that evens out the shards), with and without --cache_mode."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)  # the GPU count must not matter
    world = 8
    plain, cached, gpus = [], [], set()
    for rank in range(world):
        env, node = LAUNCHERS[launcher](rank)
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            m.setattr(samplers, "get_rank", lambda rank=rank: rank)
            m.setattr(samplers, "get_world_size", lambda: world)
            assert samplers.get_local_size() == 4, launcher
            local_rank = samplers.get_local_rank()
            gpus.add((node, local_rank))
            s = DistributedSampler(range(n), shuffle=True)
            c = NodeDistributedSampler(range(n), shuffle=True)
            for x in (s, c):
                x.set_epoch(1)
            cached_shard = list(c)
            # --cache_mode: a process only ever asks for the images it cached
            assert all(i % 4 == local_rank for i in cached_shard), (launcher, rank)
            plain += list(s)
            cached += cached_shard
    assert gpus == {(node, g) for node in range(2) for g in range(4)}, "two ranks on one GPU"
    for seen in (plain, cached):
        counts = Counter(seen)
        assert set(counts) == set(range(n))
        assert len(seen) == -(-n // world) * world
        if n % world == 0:
            assert set(counts.values()) == {1}
