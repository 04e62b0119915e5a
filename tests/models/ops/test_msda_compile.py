"""The op as a PyTorch custom op: torch.compile(fullgraph=True) and torch.export see one node."""

import pytest
import torch

from models.ops.functions import MSDeformAttnFunction, ms_deform_attn
from models.ops.modules import MSDeformAttn

SHAPES = [(5, 4), (3, 2)]


def _layer_inputs():
    shapes = torch.tensor(SHAPES, dtype=torch.long)
    sizes = shapes.prod(1)
    start = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    query = torch.randn(2, 6, 32)
    ref = torch.rand(2, 6, len(SHAPES), 2)
    x = torch.randn(2, int(sizes.sum()), 32)
    mask = torch.rand(2, int(sizes.sum())) < 0.2
    return query, ref, x, shapes, start, mask


def test_custom_ops_are_registered():
    assert hasattr(torch.ops.msda, "ms_deform_attn")
    assert hasattr(torch.ops.msda, "ms_deform_attn_backward")


def test_fake_tensor_shapes_match_real(backend, inputs):
    from torch._subclasses.fake_tensor import FakeTensorMode

    value, shapes, start, loc, weights = inputs(SHAPES, n=3, n_queries=5, n_heads=2, head_dim=6)
    real = torch.ops.msda.ms_deform_attn(value, shapes, start, loc, weights, 64)
    grads = torch.ops.msda.ms_deform_attn_backward(
        value, shapes, start, loc, weights, torch.ones_like(real), 64
    )
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in (value, shapes, start, loc, weights)]
        fake_out = torch.ops.msda.ms_deform_attn(*fakes, 64)
        fake_grads = torch.ops.msda.ms_deform_attn_backward(*fakes, torch.ones_like(fake_out), 64)
    assert (fake_out.shape, fake_out.dtype) == (real.shape, real.dtype)
    for fake, got in zip(fake_grads, grads, strict=True):
        assert (fake.shape, fake.dtype) == (got.shape, got.dtype)


def test_opcheck(inputs):
    value, shapes, start, loc, weights = inputs(SHAPES, n=2, n_queries=3)
    args = (value.requires_grad_(), shapes, start, loc.requires_grad_(), weights.requires_grad_(), 64)
    torch.library.opcheck(
        torch.ops.msda.ms_deform_attn.default,
        args,
        test_utils=(
            "test_schema",
            "test_autograd_registration",
            "test_faketensor",
            "test_aot_dispatch_dynamic",
        ),
    )


@pytest.mark.parametrize(
    "fn", [ms_deform_attn, MSDeformAttnFunction.apply], ids=["front", "autograd-function"]
)
def test_compile_fullgraph_forward_and_backward(fn, inputs):
    torch._dynamo.reset()
    value, shapes, start, loc, weights = inputs(SHAPES, n=2, n_queries=4, dtype=torch.float32)
    eager_leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    eager = fn(eager_leaves[0], shapes, start, eager_leaves[1], eager_leaves[2], 64)
    eager.square().sum().backward()

    compiled_fn = torch.compile(fn, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = compiled_fn(leaves[0], shapes, start, leaves[1], leaves[2], 64)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager)
    for got, want in zip(leaves, eager_leaves, strict=True):
        torch.testing.assert_close(got.grad, want.grad)


def test_compile_fullgraph_module():
    torch._dynamo.reset()
    layer = MSDeformAttn(d_model=32, n_levels=len(SHAPES), n_heads=4, n_points=2)
    args = _layer_inputs()
    eager = layer(*args)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(*args)
    torch.testing.assert_close(out, eager)
    out.sum().backward()
    assert layer.sampling_offsets.weight.grad is not None


def test_compile_with_inductor(inputs):
    """Inductor calls the custom op as an extern kernel (the op alone keeps its C++ codegen small)."""
    torch._dynamo.reset()
    value, shapes, start, loc, weights = inputs(SHAPES, n=2, n_queries=4, dtype=torch.float32)
    eager = ms_deform_attn(value, shapes, start, loc, weights)
    compiled = torch.compile(ms_deform_attn, fullgraph=True, backend="inductor")
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = compiled(leaves[0], shapes, start, leaves[1], leaves[2])
    torch.testing.assert_close(out, eager)
    out.sum().backward()
    assert all(t.grad is not None for t in leaves)


def test_export_module():
    layer = MSDeformAttn(d_model=32, n_levels=len(SHAPES), n_heads=4, n_points=2)
    args = _layer_inputs()
    program = torch.export.export(layer, args)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "msda.ms_deform_attn.default" in targets
    new_args = (torch.randn_like(args[0]), torch.rand_like(args[1]), torch.randn_like(args[2]), *args[3:])
    torch.testing.assert_close(program.module()(*new_args), layer(*new_args))
