import pytest

from datasets.samplers import DistributedSampler, NodeDistributedSampler


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
    assert list(unshuffled) == [1, 3, 5]


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
