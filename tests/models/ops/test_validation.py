"""The op's inputs are validated once, in the Python front, under the caller's argument names; the
compiled kernels keep only memory-safety guards (a direct call with wrong level tensors reads and
writes nothing outside its tensors)."""

import importlib.util

import pytest
import torch

from models.ops.functions import (
    MSDeformAttnFunction,
    extension,
    ms_deform_attn,
    ms_deform_attn_core_pytorch,
    validation,
)
from models.ops.modules import MSDeformAttn

HAS_EXTENSION = importlib.util.find_spec("MultiScaleDeformableAttention") is not None
SHAPES = [(4, 3), (2, 2)]


@pytest.fixture
def no_kernels(monkeypatch):
    """Fails the test if a bad input got as far as choosing a backend."""

    def refuse(device):
        raise AssertionError(f"a bad input reached the backends ({device})")

    monkeypatch.setattr(extension, "kernels_for", refuse)


def _assert_one_clear_error(info, name: str) -> None:
    message = str(info.value)
    assert name in message, message
    assert "\n" not in message, message
    # One error, not one raised while another was being handled or re-raised from another.
    assert info.value.__cause__ is None and info.value.__context__ is None


def _inputs(loc_low: float = -0.1, loc_high: float = 1.1):
    """value (2, 16, 2, 4), the level tensors of SHAPES, locations (2, 3, 2, 2, 2, 2), weights."""
    value = torch.rand(2, 16, 2, 4, dtype=torch.float64)
    loc = torch.rand(2, 3, 2, 2, 2, 2, dtype=torch.float64) * (loc_high - loc_low) + loc_low
    weights = torch.rand(2, 3, 2, 2, 2, dtype=torch.float64)
    return value, torch.tensor(SHAPES), torch.tensor([0, 12]), loc, weights


def _function_args(**change):
    value, shapes, start, loc, weights = _inputs()
    args = {"value": value, "shapes": shapes, "start": start, "loc": loc, "weights": weights, "step": 64}
    args.update({k: (v(args[k]) if callable(v) else v) for k, v in change.items()})
    return args


# (what is wrong, the change, the name the error must carry)
BAD_FUNCTION_INPUTS = [
    ("value-not-a-tensor", {"value": lambda t: t.tolist()}, "value"),
    ("value-rank", {"value": lambda t: t[0]}, "value"),
    ("value-int", {"value": lambda t: t.long()}, "value"),
    ("shapes-rank", {"shapes": lambda t: t.flatten()}, "value_spatial_shapes"),
    ("shapes-float", {"shapes": lambda t: t.float()}, "value_spatial_shapes"),
    ("shapes-zero", {"shapes": lambda t: t * 0}, "value_spatial_shapes"),
    ("shapes-sum", {"value": lambda t: t[:, :-1]}, "value_spatial_shapes"),
    ("start-int32", {"start": lambda t: t.int()}, "value_level_start_index"),
    ("start-length", {"start": lambda t: t[:1]}, "value_level_start_index"),
    ("start-values", {"start": lambda t: t + 1}, "value_level_start_index"),
    ("start-device", {"start": lambda t: t.to("meta")}, "value_level_start_index"),
    ("loc-rank", {"loc": lambda t: t[..., 0]}, "sampling_locations"),
    ("loc-heads", {"loc": lambda t: t[:, :, :1]}, "sampling_locations"),
    ("loc-int", {"loc": lambda t: t.long()}, "sampling_locations"),
    ("weights-points", {"weights": lambda t: t[..., :1]}, "attention_weights"),
    ("weights-int", {"weights": lambda t: t.int()}, "attention_weights"),
    ("step-zero", {"step": 0}, "im2col_step"),
    ("step-float", {"step": 2.0}, "im2col_step"),
]


@pytest.mark.parametrize("entry", ["ms_deform_attn", "MSDeformAttnFunction"])
@pytest.mark.parametrize("what,change,name", BAD_FUNCTION_INPUTS, ids=[c[0] for c in BAD_FUNCTION_INPUTS])
def test_each_bad_function_input_gets_one_error_naming_it(entry, what, change, name):
    a = _function_args(**change)
    fn = ms_deform_attn if entry == "ms_deform_attn" else MSDeformAttnFunction.apply
    with pytest.raises((TypeError, ValueError)) as info:
        fn(a["value"], a["shapes"], a["start"], a["loc"], a["weights"], a["step"])
    _assert_one_clear_error(info, name)


# The level sizes are data, checked when the op runs; everything else is rejected before that.
DATA_ERRORS = ("shapes-zero", "shapes-sum", "start-values")
METADATA_ERRORS = [c for c in BAD_FUNCTION_INPUTS if c[0] not in DATA_ERRORS]


@pytest.mark.parametrize("what,change,name", METADATA_ERRORS, ids=[c[0] for c in METADATA_ERRORS])
def test_metadata_errors_never_reach_a_backend(what, change, name, no_kernels):
    a = _function_args(**change)
    with pytest.raises((TypeError, ValueError)):
        ms_deform_attn(a["value"], a["shapes"], a["start"], a["loc"], a["weights"], a["step"])


LAYER = {"d_model": 16, "n_levels": 2, "n_heads": 2, "n_points": 2}
S = sum(h * w for h, w in SHAPES)


def _module_args(**change):
    shapes = torch.tensor(SHAPES)
    args = {
        "query": torch.rand(2, 4, 16),
        "reference_points": torch.rand(2, 4, 2, 2),
        "input_flatten": torch.rand(2, S, 16),
        "input_spatial_shapes": shapes,
        "input_level_start_index": torch.tensor([0, 12]),
        "input_padding_mask": torch.zeros(2, S, dtype=torch.bool),
    }
    args.update({k: (v(args[k]) if callable(v) else v) for k, v in change.items()})
    return args


BAD_MODULE_INPUTS = [
    ("query-width", {"query": lambda t: t[..., :8]}, "query"),
    ("query-not-a-tensor", {"query": lambda t: t.tolist()}, "query"),
    ("query-int", {"query": lambda t: t.long()}, "query"),
    ("flatten-batch", {"input_flatten": lambda t: t[:1]}, "input_flatten"),
    ("flatten-int", {"input_flatten": lambda t: t.long()}, "input_flatten"),
    ("reference-levels", {"reference_points": lambda t: t[:, :, :1]}, "reference_points"),
    ("reference-last-dim", {"reference_points": lambda t: t[..., :1]}, "reference_points"),
    ("reference-device", {"reference_points": lambda t: t.to("meta")}, "reference_points"),
    ("shapes-levels", {"input_spatial_shapes": lambda t: t[:1]}, "input_spatial_shapes"),
    ("shapes-float", {"input_spatial_shapes": lambda t: t.float()}, "input_spatial_shapes"),
    ("shapes-sum", {"input_spatial_shapes": lambda t: t + 1}, "input_spatial_shapes"),
    ("start-length", {"input_level_start_index": lambda t: t[:1]}, "input_level_start_index"),
    ("start-int32", {"input_level_start_index": lambda t: t.int()}, "input_level_start_index"),
    ("start-values", {"input_level_start_index": lambda t: t + 1}, "input_level_start_index"),
    ("start-device", {"input_level_start_index": lambda t: t.to("meta")}, "input_level_start_index"),
    ("mask-length", {"input_padding_mask": lambda t: t[:, :-1]}, "input_padding_mask"),
    ("mask-not-bool", {"input_padding_mask": lambda t: t.float()}, "input_padding_mask"),
]


@pytest.mark.parametrize("what,change,name", BAD_MODULE_INPUTS, ids=[c[0] for c in BAD_MODULE_INPUTS])
def test_each_bad_module_input_gets_one_error_naming_it(what, change, name):
    layer = MSDeformAttn(**LAYER)
    with pytest.raises((TypeError, ValueError)) as info:
        layer(**_module_args(**change))
    _assert_one_clear_error(info, name)


def test_module_checks_its_inputs_once_and_the_op_front_not_again(monkeypatch):
    calls = {"module": 0, "function": 0}
    for name, key in (("check_module_inputs", "module"), ("check_function_inputs", "function")):
        real = getattr(validation, name)

        def counted(*args, _real=real, _key=key):
            calls[_key] += 1
            return _real(*args)

        monkeypatch.setattr(f"models.ops.modules.ms_deform_attn.{name}", counted, raising=False)
        monkeypatch.setattr(f"models.ops.functions.ms_deform_attn_func.{name}", counted, raising=False)
    MSDeformAttn(**LAYER)(**_module_args())
    assert calls == {"module": 1, "function": 0}


def _overrunning_levels():
    """Inputs whose second level claims more pixels than value holds: (4, 3) fits, (3, 3) does not."""
    value, _, _, loc, weights = _inputs(0.0, 1.0)
    shapes = torch.tensor([[4, 3], [3, 3]])
    start = torch.tensor([0, 12])
    return value, shapes, start, loc, weights


def _check_second_level_skipped(out, grads, value, loc, weights):
    """The fitting level's contribution, as if the overrunning level had no points."""
    fitting = (value[:, :12], loc[:, :, :, :1], weights[:, :, :, :1])
    first = [t.detach().clone().requires_grad_() for t in fitting]
    want = ms_deform_attn_core_pytorch(first[0], torch.tensor([[4, 3]]), first[1], first[2])
    torch.testing.assert_close(out, want.detach())
    if grads is None:
        return
    want.backward(torch.ones_like(want))
    grad_value, grad_loc, grad_weights = grads
    torch.testing.assert_close(grad_value[:, :12], first[0].grad)
    assert not grad_value[:, 12:].any()
    torch.testing.assert_close(grad_loc[:, :, :, :1], first[1].grad)
    torch.testing.assert_close(grad_weights[:, :, :, :1], first[2].grad)
    assert not grad_loc[:, :, :, 1:].any() and not grad_weights[:, :, :, 1:].any()


@pytest.mark.skipif(not HAS_EXTENSION, reason="extension not built (make.sh)")
def test_compiled_cpu_kernels_skip_a_level_outside_value():
    import MultiScaleDeformableAttention as ext

    value, shapes, start, loc, weights = _overrunning_levels()
    out = ext.ms_deform_attn_forward(value, shapes, start, loc, weights, 64)
    grads = ext.ms_deform_attn_backward(value, shapes, start, loc, weights, torch.ones_like(out), 64)
    _check_second_level_skipped(out, grads, value, loc, weights)


@pytest.mark.cuda_emulated
def test_emulated_cuda_kernels_skip_a_level_outside_value():
    from models.ops import emulation

    emulated = emulation.load()
    value, shapes, start, loc, weights = _overrunning_levels()
    out = emulated.ms_deform_attn_forward(value, shapes, start, loc, weights, 64)
    grads = emulated.ms_deform_attn_backward(value, shapes, start, loc, weights, torch.ones_like(out), 64)
    _check_second_level_skipped(out, grads, value, loc, weights)


@pytest.mark.skipif(not HAS_EXTENSION, reason="extension not built (make.sh)")
@pytest.mark.parametrize("bad_start", [-1, 10**12])
def test_compiled_cpu_kernels_skip_a_level_starting_outside_value(bad_start):
    import MultiScaleDeformableAttention as ext

    value, shapes, _, loc, weights = _overrunning_levels()
    shapes = torch.tensor([[4, 3], [2, 2]])
    out = ext.ms_deform_attn_forward(value, shapes, torch.tensor([0, bad_start]), loc, weights, 64)
    _check_second_level_skipped(out, None, value, loc, weights)
