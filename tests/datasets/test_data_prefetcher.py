import torch

from datasets.data_prefetcher import DataPrefetcher, data_prefetcher
from util.misc import collate_fn


def test_cpu_prefetcher_is_plain_iteration():
    items = [(torch.full((3, 4 + i, 5), float(i)), {"labels": torch.tensor([i]), "image_id": i})
             for i in range(5)]
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=collate_fn)
    prefetcher = data_prefetcher(loader, "cpu", prefetch=True)
    seen = []
    samples, targets = prefetcher.next()
    while samples is not None:
        assert samples.tensors.shape[0] == len(targets)
        seen += [t["labels"].item() for t in targets]
        samples, targets = prefetcher.next()
    assert seen == [0, 1, 2, 3, 4]
    assert [len(t) for _, t in DataPrefetcher(loader, torch.device("cpu"))] == [2, 2, 1]
