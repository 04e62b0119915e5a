"""Export mode: the op as plain PyTorch over symbolic level sizes, for ONNX export (docs/design/op.md).

The normal path builds the level tensors from host-side ints (``level_tensors``) and runs the op as
one opaque custom op. Both freeze a traced graph to the size it was traced at, and an ONNX exporter
knows no ``msda::ms_deform_attn``. Inside ``export_mode()``:

- ``level_tensors`` keeps the level sizes as they come (``torch.export``'s symbolic ints, derived
  from the image's height and width) instead of casting them to ``int``, and fills the level
  tensors with them, so ``spatial_shapes`` and ``level_start_index`` are computed in the graph;
- the op runs ``ms_deform_attn_core_pytorch`` inline (``grid_sample``, exported as the standard
  GridSample operator), splitting ``value`` by those symbolic sizes; the level checks that need
  concrete values are left out: the model builds the level tensors itself.

The switch is explicit: nothing looks at a tensor to guess whether it is being traced. Outside the
context nothing changes (one flag read per attention call).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["export_mode", "is_exporting"]

_exporting: ContextVar[bool] = ContextVar("msda_export_mode", default=False)


@contextmanager
def export_mode() -> Iterator[None]:
    """Trace the op for export inside this context (``tools/export_onnx.py`` enters it)."""
    token = _exporting.set(True)
    try:
        yield
    finally:
        _exporting.reset(token)


def is_exporting() -> bool:
    return _exporting.get()
