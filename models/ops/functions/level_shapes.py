"""The level shapes of the op, known on the host so that the hot path never reads them from the GPU.

The op needs the (H, W) of every level as Python ints (to validate its inputs and to split
``value`` on the pure-PyTorch path). Reading them from a CUDA tensor is a blocking device-to-host
copy, and a CUDA graph cannot be captured around one. ``level_tensors`` builds the two index
tensors from ints the caller already has (a model knows them from its feature maps' ``.shape``)
and remembers those ints; ``host_values`` then answers without touching the device. A device
tensor made elsewhere is read once and remembered until it is modified in place.
"""

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from .export_mode import is_exporting

__all__ = ["host_values", "level_tensors"]

# tensor -> (its version counter when the values were recorded, the values as nested lists)
_known: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _version(t: Tensor) -> int | None:
    """The in-place change counter; None for inference-mode tensors, which keep none."""
    return None if t.is_inference() else t._version


def _remember(t: Tensor, values: list) -> None:
    if torch.compiler.is_compiling() and not is_exporting():
        # A traced tensor is a placeholder: the compiled code makes a new one on every call. An
        # export traces once, and the op reads the symbolic sizes remembered here.
        return
    _known[t] = (_version(t), values)


def level_tensors(shapes: Sequence[tuple[int, int]], device: torch.device | str) -> tuple[Tensor, Tensor]:
    """``spatial_shapes`` (L, 2) int64 as (H, W) and ``level_start_index`` (L,) int64 on ``device``.

    Filled in place from Python ints (a kernel launch each) rather than copied from host memory:
    a pageable host-to-device copy would also block the host. In ``export_mode`` the sizes stay as
    given (symbolic under ``torch.export``): ``int`` would freeze them to the traced image size.
    """
    if not is_exporting():
        shapes = [(int(h), int(w)) for h, w in shapes]
    starts = [sum(h * w for h, w in shapes[:i]) for i in range(len(shapes))]
    spatial_shapes = torch.empty((len(shapes), 2), dtype=torch.long, device=device)
    level_start_index = torch.empty((len(shapes),), dtype=torch.long, device=device)
    for i, ((h, w), start) in enumerate(zip(shapes, starts, strict=True)):
        spatial_shapes[i, 0].fill_(h)
        spatial_shapes[i, 1].fill_(w)
        level_start_index[i].fill_(start)
    _remember(spatial_shapes, [[h, w] for h, w in shapes])
    _remember(level_start_index, starts)
    return spatial_shapes, level_start_index


def host_values(t: Tensor) -> list:
    """``t.tolist()``, without a device synchronisation for tensors from ``level_tensors``.

    CPU tensors are read directly (no synchronisation there). Other device tensors are read once
    and remembered until an in-place change bumps their version counter; an inference-mode tensor
    has no counter, so one made elsewhere is read at every call (those from ``level_tensors`` are
    still answered from memory: nothing modifies them in place).
    """
    known = _known.get(t)
    if known is not None and known[0] == _version(t):
        return known[1]
    if is_exporting():
        raise ValueError(
            "ms_deform_attn in export mode: the level tensors must come from level_tensors, whose "
            "sizes stay symbolic; this one's values would be frozen into the exported graph"
        )
    values = t.tolist()
    if t.device.type != "cpu" and not t.is_inference():
        _remember(t, values)
    return values
