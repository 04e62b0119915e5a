"""What a model needs to know about the data set it is built for.

Each data set describes itself with a ``DatasetMetadata`` (``datasets.dataset_metadata(args)``) and the
model builder reads only this object, so that ``models`` never imports ``datasets`` and a new data set
needs no change in ``models``. The type lives here, beside neither package, because both use it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetMetadata:
    """num_classes: the classifier width (labels are raw category ids, so max id + 1);
    is_thing_map: category id -> isthing for panoptic data sets, None for detection-only ones (the
    model then has no panoptic post-processor)."""

    num_classes: int
    is_thing_map: Mapping[int, bool] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"DatasetMetadata: num_classes must be >= 1, got {self.num_classes}")
