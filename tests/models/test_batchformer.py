"""BatchFormerV2 across the batch: the two streams and the flags' fixes (docs/design/two_streams.md)."""

import argparse
import dataclasses

import pytest
import torch
from torch import nn

from models import build_model
from models.batchformer import (
    AcrossRanks,
    BatchFormerConfig,
    BatchFormerRun,
    Layout,
    attend_across_batch,
    batchformer_step,
    build_batchformer,
)
from models.detectors import batchformer_of
from tests.tiny_model import tiny_flags
from util.args import get_args_parser
from util.misc import nested_tensor_from_tensor_list

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = tiny_flags(
    "--enc_layers", "2", "--dec_layers", "2", "--num_queries", "6", "--nheads", "4", "--dropout", "0",
    "--num_feature_levels", "4"
)


def _model(*flags):
    torch.manual_seed(0)
    model = build_model(get_args_parser().parse_args([*SMALL, *flags]))[0]
    for m in model.modules():  # the BatchFormer's own dropout (0.5) too, so that streams can be compared
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    return model


def _samples():
    g = torch.Generator().manual_seed(3)
    return nested_tensor_from_tensor_list(
        [
            torch.randn(3, 64, 80, generator=g),
            torch.randn(3, 48, 64, generator=g),
            torch.randn(3, 64, 56, generator=g),
        ]
    )


def _resolved(*flags, meta_arch="deformable_detr"):
    from util.args import flag_defaults

    return batchformer_of(argparse.Namespace(**{**flag_defaults(meta_arch), "enc_layers": 6,
                                               **dict(zip(flags[::2], flags[1::2]))}))


def test_insert_indices_default_sorted_and_validated():
    assert _resolved("bf", 0, "insert_idx", [3]) == (None, None)
    config, notice = _resolved("bf", 1)
    assert config.positions == (0,) and config.two_stream and "--insert_idx 0" in notice
    assert _resolved("bf", 1, "insert_idx", [4, 0, 4, 2])[0].positions == (0, 2, 4)
    assert not _resolved("bf", 7, "insert_idx", [1])[0].two_stream
    bad = [(("bf", 2, "insert_idx", [0]), "--bf"), (("bf", 1, "insert_idx", [6]), "--insert_idx"),
           (("bf", 1, "insert_idx", [-1]), "--insert_idx"), (("bf", 1, "share_bf", 2), "--share_bf"),
           (("bf", 1, "bt_num_layers", 0), "--bt_num_layers")]
    for flags, flag in bad:
        with pytest.raises(ValueError, match=flag):
            _resolved(*flags)


@pytest.mark.parametrize("meta_arch", ["detr", "conditional_detr"])
def test_detr_family_modes(meta_arch):
    """--bf 3 after each --insert_idx layer, else every layer from --start_idx; --bf 1 after the whole
    encoder; --bf 2 after layer 4 (docs/design/detectors.md); all two-stream."""
    def positions(*flags):
        config, notice = _resolved(*flags, meta_arch=meta_arch)
        assert config.two_stream and notice is None
        return config.positions

    assert positions("bf", 3) == (0, 1, 2, 3, 4, 5)
    assert positions("bf", 3, "start_idx", 4) == (4, 5)
    assert positions("bf", 3, "insert_idx", [0]) == (0,)
    assert positions("bf", 1) == (5,) and positions("bf", 2) == (4,)
    bad = [(("bf", 7), "--bf must be 0 .*3 two streams"), (("bf", 3, "start_idx", 6), "--start_idx"),
           (("bf", 1, "insert_idx", [0]), "--insert_idx does not apply to --bf 1"),
           (("bf", 2, "enc_layers", 4), "--enc_layers above 4")]
    for flags, match in bad:
        with pytest.raises(ValueError, match=match):
            _resolved(*flags, meta_arch=meta_arch)


def test_layer_configuration():
    layer = build_batchformer(32)
    assert isinstance(layer, nn.TransformerEncoderLayer)
    assert layer.self_attn.num_heads == 4 and layer.linear1.out_features == 32 and layer.dropout.p == 0.5
    assert not layer.self_attn.batch_first
    deep = build_batchformer(32, 3)
    assert isinstance(deep, nn.TransformerEncoder) and len(deep.layers) == 3
    with pytest.raises(ValueError, match="--hidden_dim"):
        build_batchformer(30)


def test_each_position_attends_across_the_images():
    layer = build_batchformer(16).eval()
    x = torch.randn(5, 7, 16)  # (B, L, C)
    out = attend_across_batch(layer, x, Layout.BATCH_FIRST)
    assert out.shape == x.shape
    for pos in range(7):  # position l alone: a sequence of the 5 images at l
        torch.testing.assert_close(out[:, pos], layer(x[:, pos : pos + 1])[:, 0], rtol=1e-5, atol=1e-5)
    changed = x.clone()
    changed[3, 2] += 1.0  # image 3 at position 2 changes only position 2 of every image
    diff = (attend_across_batch(layer, changed, Layout.BATCH_FIRST) - out).abs().sum(-1)
    assert (diff[:, 2] > 0).all() and diff[:, [0, 1, 3, 4, 5, 6]].max() == 0


def test_two_stream_steps():
    add_one = lambda t: t + 1  # stands in for a BatchFormer
    x = torch.zeros(2, 3, 4)
    first = batchformer_step(add_one, x, Layout.BATCH_FIRST, num_images=2, two_stream=True, num_streams=1)
    assert torch.equal(first, torch.cat([x, x + 1]))
    later = batchformer_step(add_one, first, Layout.BATCH_FIRST, num_images=2, two_stream=True, num_streams=2)
    assert torch.equal(later, torch.cat([x, x + 2]))  # the second stream only
    single = batchformer_step(add_one, x, Layout.BATCH_FIRST, num_images=2, two_stream=False, num_streams=1)
    assert torch.equal(single, x + 1)


@pytest.mark.parametrize("layout", list(Layout))
def test_every_layout_attends_across_its_image_dimension(layout):
    """The same images give the same result in every layout: (B, L, C), (L, B, C) and, for one position,
    (N, C); the two streams are concatenated along the image dimension."""
    torch.manual_seed(0)
    layer = build_batchformer(16).eval()
    images = torch.randn(3, 5, 16)  # (B, L, C)
    if layout is Layout.VECTORS:
        images = images[:, :1]
    want = attend_across_batch(layer, images, Layout.BATCH_FIRST)
    as_layout = {Layout.BATCH_FIRST: lambda t: t, Layout.SEQUENCE_FIRST: lambda t: t.transpose(0, 1),
                 Layout.VECTORS: lambda t: t[:, 0]}[layout]
    torch.testing.assert_close(attend_across_batch(layer, as_layout(images), layout), as_layout(want))
    first = batchformer_step(layer, as_layout(images), layout, 3, two_stream=True, num_streams=1)
    torch.testing.assert_close(first, as_layout(torch.cat([images, want])))
    later = batchformer_step(layer, first, layout, 3, two_stream=True, num_streams=2)
    torch.testing.assert_close(later, as_layout(torch.cat([images, attend_across_batch(layer, want,
                                                                                      Layout.BATCH_FIRST)])))


def test_sequence_first_over_every_rank_is_the_batch_first_result(monkeypatch):
    """--bf_scope global with a sequence-first encoder: AcrossRanks sees the images as its sequence."""
    import models.batchformer as bfm

    torch.manual_seed(0)
    bf = build_batchformer(16).eval()
    everything = torch.randn(5, 4, 16)  # (B, L, C) of both ranks: rank 0 holds images 0-1
    monkeypatch.setattr(bfm, "get_world_size", lambda: 2)
    monkeypatch.setattr(bfm, "all_gather_rows", lambda x: torch.cat([x, everything[2:]]))
    local = everything[:2].transpose(0, 1)  # (L, B_r, C)
    got = attend_across_batch(AcrossRanks(bf), local, Layout.SEQUENCE_FIRST)
    torch.testing.assert_close(got, bf(everything)[:2].transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_a_run_doubles_once_and_steps_the_second_stream_after():
    """BatchFormerRun on a sequence-first encoder state: [x ; bf(x)] at the first position (the caller
    is told, to duplicate its per-image inputs), the second stream only at the next; checkpointed steps
    give the same values and gradients."""
    torch.manual_seed(0)
    config = BatchFormerConfig((0, 2), two_stream=True, share=False)
    bf = config.build(16).eval()  # no dropout: the streams are compared with the layers alone
    x = torch.randn(4, 3, 16, requires_grad=True)  # (L, B, C)
    results = []
    for checkpointed in (False, True):
        plan = BatchFormerConfig((0, 2), share=False, use_checkpoint=checkpointed).plan(bf, training=True)
        run = BatchFormerRun(plan, Layout.SEQUENCE_FIRST, num_images=3)
        y, doubled0 = run.after_layer(0, x)
        y1, doubled1 = run.after_layer(1, y)
        y2, doubled2 = run.after_layer(2, y1)
        assert (doubled0, doubled1, doubled2, run.num_streams) == (True, False, False, 2)
        assert y1 is y and y2.shape == (4, 6, 16) and torch.equal(y2[:, :3], x)
        expect = bf["2"](bf["0"](x.transpose(0, 1))).transpose(0, 1)
        torch.testing.assert_close(y2[:, 3:], expect)
        (grad,) = torch.autograd.grad(y2.square().sum(), x)
        results.append((y2, grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)
    assert BatchFormerRun(None, Layout.SEQUENCE_FIRST, 3).after_layer(0, x) == (x, False)


def test_config_plans_what_each_pass_runs():
    config = BatchFormerConfig((1,), two_stream=True, eval_bf=False)
    bf = config.build(16)
    assert config.plan(bf, training=False) is None and config.plan(bf, training=True).two_stream
    with_eval = BatchFormerConfig((1,), eval_bf=True, scope="global")
    plan = with_eval.plan(bf, training=False)
    assert not plan.two_stream and plan.across_ranks and isinstance(plan.layers[1], AcrossRanks)
    assert with_eval.spans_ranks(False) and not config.spans_ranks(True)
    single = BatchFormerConfig((1,), two_stream=False).plan(bf, training=True)
    assert not single.two_stream


@pytest.mark.parametrize("flags", [[], ["--with_box_refine", "--two_stage"]])
def test_bf_model_at_inference_equals_the_baseline(flags):
    baseline = _model(*flags).eval()
    bf = _model(*flags, "--bf", "1", "--insert_idx", "1", "--share_bf", "0").eval()
    result = bf.load_state_dict(baseline.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".bf." in k for k in result.missing_keys)
    calls = []
    bf.transformer.bf["1"].register_forward_hook(lambda *a: calls.append(1))
    samples = _samples()
    with torch.no_grad():
        a, b = baseline(samples), bf(samples)
    assert calls == []  # skipped without --eval_bf
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(b[key], a[key])


@pytest.mark.parametrize(
    "flags",
    [
        ["--insert_idx", "0"],
        ["--insert_idx", "1", "0", "--share_bf", "0"],
        ["--insert_idx", "0", "--with_box_refine", "--two_stage", "--share_bf", "0"],
    ],
)
def test_stream_0_is_the_plain_model_and_stream_1_the_eval_bf_model(flags):
    model = _model("--bf", "1", *flags)
    samples = _samples()
    model.train()
    two = model(samples)
    b = samples.tensors.shape[0]
    assert two["pred_logits"].shape[0] == 2 * b and len(two["aux_outputs"]) == 1
    model.eval()
    with torch.no_grad():
        plain = model(samples)
        model.transformer.batchformer = dataclasses.replace(model.transformer.batchformer, eval_bf=True)
        with_bf = model(samples)
    assert plain["pred_logits"].shape[0] == b
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(two[key][:b], plain[key], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(two[key][b:], with_bf[key], rtol=1e-4, atol=1e-5)
    # the box heads start at zero (boxes = references), the class logits see the BatchFormer
    assert not torch.allclose(with_bf["pred_logits"], plain["pred_logits"])
    if "enc_outputs" in two:
        torch.testing.assert_close(
            two["enc_outputs"]["pred_logits"][:b], plain["enc_outputs"]["pred_logits"], rtol=1e-4, atol=1e-5
        )


def test_only_stream_1_reaches_the_batchformer():
    model = _model("--bf", "1", "--insert_idx", "0", "1", "--share_bf", "0").train()
    samples = _samples()
    b = samples.tensors.shape[0]
    bf_params = list(model.transformer.bf.parameters())
    out = model(samples)
    (out["pred_logits"][:b].sum() + out["pred_boxes"][:b].sum()).backward()
    assert all(p.grad is None or not p.grad.any() for p in bf_params)
    assert model.transformer.encoder.layers[0].linear1.weight.grad is not None
    model.zero_grad(set_to_none=True)
    out = model(samples)
    (out["pred_logits"][b:].sum() + out["pred_boxes"][b:].sum()).backward()
    for name in ("0", "1"):
        grad = model.transformer.bf[name].linear1.weight.grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_separate_layers_are_registered_twice_as_the_same_modules():
    model = _model("--bf", "1", "--insert_idx", "1", "0", "--share_bf", "0")
    t = model.transformer
    assert list(t.bf.keys()) == ["0", "1"] and t.encoder.bf is t.bf
    sd = model.state_dict()
    assert (
        sd["transformer.bf.1.linear1.weight"].data_ptr()
        == sd["transformer.encoder.bf.1.linear1.weight"].data_ptr()
    )
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("transformer.encoder.bf") for n in names)  # counted once
    shared = _model("--bf", "1", "--insert_idx", "0", "1")
    assert isinstance(shared.transformer.bf, nn.TransformerEncoderLayer)
    assert not hasattr(shared.transformer.encoder, "bf")
    deep = _model("--bf", "1", "--bt_num_layers", "2")
    assert "transformer.bf.layers.1.linear1.weight" in deep.state_dict()
