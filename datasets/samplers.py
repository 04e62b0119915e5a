"""Samplers that split a data set across the processes of a distributed run.

``DistributedSampler``: one permutation shared by all ranks (seeded by ``seed + epoch``), padded by
repeating its head to ``ceil(N / world_size) * world_size`` entries; rank r takes the r-th
contiguous chunk, as the public sampler does. Deformable DETR's outputs depend on an image's batch
partners (padding and normalisation statistics span the padded batch), so which images share a rank
decides whether a multi-GPU ``--eval`` reproduces a published figure.

``NodeDistributedSampler`` does the same within the images a process caches under ``--cache_mode``:
local rank r of every node only ever sees indices i with i % local_size == r (so each process holds
1 / local_size of the images in memory), and the nodes take contiguous chunks of that shard.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from util.dist import get_local_rank, get_local_size, get_node_rank, get_rank, get_world_size


def _padded(indices: list[int], total: int) -> list[int]:
    """Repeat ``indices`` cyclically up to ``total`` entries (a short list may wrap several times)."""
    if not indices:
        return indices
    repeats = math.ceil(total / len(indices))
    return (indices * repeats)[:total]


class DistributedSampler(Sampler[int]):
    """Shard of ``dataset`` for ``rank`` among ``num_replicas``; call ``set_epoch`` every epoch."""

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None,
                 local_rank: int | None = None, local_size: int | None = None,
                 shuffle: bool = True, seed: int = 0):
        self.dataset = dataset
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside [0, {self.num_replicas})")
        self.epoch = 0
        self.shuffle = shuffle
        self.seed = seed
        self.num_samples = math.ceil(len(dataset) / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            return torch.randperm(len(self.dataset), generator=g).tolist()
        return list(range(len(self.dataset)))

    def __iter__(self) -> Iterator[int]:
        indices = _padded(self._order(), self.total_size)
        start = self.rank * self.num_samples
        return iter(indices[start : start + self.num_samples])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class NodeDistributedSampler(DistributedSampler):
    """Like ``DistributedSampler`` but restricted to the indices cached by this local rank.

    ``node_rank`` (this process's node) defaults to the launcher's (SLURM_NODEID, GROUP_RANK) when
    ``rank`` is this process's own; for an explicit ``rank`` ranks are taken to fill nodes in order.
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None,
                 local_rank: int | None = None, local_size: int | None = None,
                 shuffle: bool = True, seed: int = 0, node_rank: int | None = None):
        super().__init__(dataset, num_replicas, rank, shuffle=shuffle, seed=seed)
        self.local_rank = get_local_rank() if local_rank is None else local_rank
        self.local_size = get_local_size() if local_size is None else local_size
        if self.num_replicas % self.local_size != 0:
            raise ValueError(f"world size {self.num_replicas} is not a multiple of the processes per "
                             f"node ({self.local_size}); NodeDistributedSampler needs full nodes")
        if not 0 <= self.local_rank < self.local_size:
            raise ValueError(f"local rank {self.local_rank} is outside [0, {self.local_size})")
        # Processes with the same local rank (one per node) split this local rank's images.
        self.num_nodes = self.num_replicas // self.local_size
        if node_rank is None:
            # Under SLURM's cyclic distribution rank // local_size is not the node.
            node_rank = get_node_rank() if rank is None else self.rank // self.local_size
        if not 0 <= node_rank < self.num_nodes:
            raise ValueError(f"node rank {node_rank} is outside [0, {self.num_nodes})")
        self.node = node_rank
        self.total_size_per_local_rank = self.num_samples * self.num_nodes

    def __iter__(self) -> Iterator[int]:
        # Shuffle the whole set with the shared seed, then keep the local shard: every node orders
        # the shard identically, and the shard's size is the same for every local rank after padding.
        mine = [i for i in self._order() if i % self.local_size == self.local_rank]
        mine = _padded(mine, self.total_size_per_local_rank)
        start = self.node * self.num_samples
        return iter(mine[start : start + self.num_samples])
