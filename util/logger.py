"""Smoothed metrics and the progress lines of the training and evaluation loops."""
from __future__ import annotations

import datetime
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from util.dist import all_reduce, is_dist_avail_and_initialized


class SmoothedValue:
    """A series of values: the median/average over a window and the global average."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.4f} ({global_avg:.4f})"):
        self.deque: deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """Make count and total global; the window stays local."""
        if not is_dist_avail_and_initialized():
            return
        # all_reduce puts the tensor where the backend wants it (a GPU under NCCL).
        t = all_reduce(torch.tensor([self.count, self.total], dtype=torch.float64))
        self.count, self.total = int(t[0].item()), t[1].item()

    @property
    def median(self) -> float:
        return torch.tensor(list(self.deque)).median().item()

    @property
    def avg(self) -> float:
        return torch.tensor(list(self.deque), dtype=torch.float32).mean().item()

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def max(self) -> float:
        return max(self.deque)

    @property
    def value(self) -> float:
        return self.deque[-1]

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg,
                               max=self.max, value=self.value)


class MetricLogger:
    """Named SmoothedValues and an iterator that prints progress: iteration, it/s, ETA, metrics.

    ``shown``: the meters the progress lines print, in this order (those not updated yet are left
    out); None prints every meter and the iteration and data-loading times. Every meter is kept
    either way: the choice only keeps a line readable when a model logs dozens of loss terms.
    """

    def __init__(self, delimiter: str = "  ", shown: Sequence[str] | None = None):
        self.meters: defaultdict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.shown = None if shown is None else tuple(shown)

    def update(self, **kwargs) -> None:
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if not isinstance(v, (float, int)):
                raise TypeError(f"MetricLogger.update: {k} must be a number, got {type(v).__name__}")
            self.meters[k].update(v)

    def __getattr__(self, attr: str):
        if attr in self.__dict__.get("meters", {}):
            return self.meters[attr]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    def __str__(self) -> str:
        names = self.meters if self.shown is None else [n for n in self.shown if n in self.meters]
        # A meter added ahead (add_meter) but not updated yet has nothing to print.
        return self.delimiter.join(f"{n}: {self.meters[n]}" for n in names if self.meters[n].deque)

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def log_every(self, iterable: Iterable, print_freq: int, header: str = "", total: int | None = None,
                  on_print: Callable[[int, float, float], None] | None = None) -> Iterator:
        """Yield from iterable, printing a progress line every print_freq iterations and at the end.

        ``on_print(i, iteration_seconds, data_seconds)`` runs with each progress line, once iteration i
        is done: its time in all and the part spent waiting for its batch.
        """
        n = total if total is not None else len(iterable)
        width = len(str(n))
        start = end = time.time()
        iter_time = SmoothedValue(fmt="{avg:.4f}")
        data_time = SmoothedValue(fmt="{avg:.4f}")
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == n - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (n - i - 1)))
                rate = 1.0 / max(iter_time.avg, 1e-9)
                parts = [header, f"[{i:{width}d}/{n}]", f"eta: {eta}", f"{rate:.2f} it/s", str(self)]
                if self.shown is None:
                    parts += [f"time: {iter_time}", f"data: {data_time}"]
                if torch.cuda.is_available():
                    parts.append(f"max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}MB")
                print(self.delimiter.join(p for p in parts if p), flush=True)
                if on_print is not None:
                    on_print(i, iter_time.value, data_time.value)
            end = time.time()
        elapsed = time.time() - start
        total_time = datetime.timedelta(seconds=int(elapsed))
        print(f"{header} Total time: {total_time} ({elapsed / max(n, 1):.4f} s / it)", flush=True)
