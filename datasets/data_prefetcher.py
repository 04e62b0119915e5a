"""Overlap the host-to-GPU copy of the next batch with the computation on the current one.

On a CUDA device the next ``(samples, targets)`` is copied on a side stream while the model works;
``next()`` makes the compute stream wait for that copy and marks the tensors as used by it, so the
caching allocator does not hand their memory out early. On CPU (or with ``prefetch=False``) it is
plain iteration plus ``.to(device)``. ``next()`` returns ``(None, None)`` when the loader is done.
"""
from __future__ import annotations

import torch


def _targets_to(targets, device, non_blocking: bool):
    return [{k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
             for k, v in t.items()} for t in targets]


class DataPrefetcher:
    def __init__(self, loader, device, prefetch: bool = True):
        self.loader = iter(loader)
        self.device = torch.device(device)
        self.prefetch = prefetch and self.device.type == "cuda" and torch.cuda.is_available()
        if self.prefetch:
            self.stream = torch.cuda.Stream(device=self.device)
            self._preload()

    def _preload(self) -> None:
        try:
            samples, targets = next(self.loader)
        except StopIteration:
            self.next_samples = self.next_targets = None
            return
        with torch.cuda.stream(self.stream):
            self.next_samples = samples.to(self.device, non_blocking=True)
            self.next_targets = _targets_to(targets, self.device, non_blocking=True)

    def next(self):
        if not self.prefetch:
            try:
                samples, targets = next(self.loader)
            except StopIteration:
                return None, None
            return samples.to(self.device), _targets_to(targets, self.device, non_blocking=False)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        samples, targets = self.next_samples, self.next_targets
        if samples is not None:
            current = torch.cuda.current_stream(self.device)
            samples.record_stream(current)
            for t in targets:
                for v in t.values():
                    if isinstance(v, torch.Tensor):
                        v.record_stream(current)
        self._preload()
        return samples, targets

    def __iter__(self):
        while True:
            samples, targets = self.next()
            if samples is None:
                return
            yield samples, targets


# The name the original engine imports.
data_prefetcher = DataPrefetcher
