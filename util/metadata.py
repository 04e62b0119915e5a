"""What a model needs to know about the data set it is built for.

Each data set describes itself with a ``DatasetMetadata`` (``datasets.dataset_metadata(args)``) and the
model builder reads only this object, so that ``models`` never imports ``datasets`` and a new data set
needs no change in ``models``. The type lives here, beside neither package, because both use it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetMetadata:
    """num_classes: the classifier width (labels are raw category ids, so max id + 1);
    is_thing_map: category id -> isthing for panoptic data sets, None for detection-only ones (the
    model then has no panoptic post-processor);
    class_names: category id -> name, for whatever shows a class to a person (None: unknown, show ids)."""

    num_classes: int
    is_thing_map: Mapping[int, bool] | None = field(default=None)
    class_names: Mapping[int, str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"DatasetMetadata: num_classes must be >= 1, got {self.num_classes}")
        if self.class_names is not None:
            outside = sorted(i for i in self.class_names if not 0 <= i < self.num_classes)
            if outside:
                raise ValueError(f"DatasetMetadata: class ids {outside[:5]} are outside the classifier's "
                                 f"range [0, {self.num_classes})")

    def with_given(self, num_classes: int | None, class_names: Mapping | None) -> DatasetMetadata:
        """This description with the classifier's width (``--num_classes``) and names (recorded in a
        checkpoint; JSON gives the ids as strings) where they are given."""
        given: dict = {}
        if num_classes is not None:
            given["num_classes"] = num_classes
        if class_names is not None:
            given["class_names"] = {int(k): str(v) for k, v in class_names.items()}
        return dataclasses.replace(self, **given) if given else self
