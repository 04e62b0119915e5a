"""Deformable transformer: reference points, valid ratios, two-stage proposals, refinement, init."""

import math

import pytest
import torch
from torch import nn

from models.batchformer import BatchFormerConfig
from models.deformable_detr import MLP
from models.deformable_transformer import DeformableTransformer, DeformableTransformerEncoder, valid_sizes
from models.ops.modules import MSDeformAttn
from util.misc import inverse_sigmoid

pytestmark = pytest.mark.usefixtures("one_thread")


SHAPES = [(6, 8), (3, 4)]  # two levels of a padded batch
VALID = [[(6, 8), (3, 4)], [(4, 5), (2, 3)]]  # unpadded (h, w) of each image on each level


def _masks():
    masks = []
    for lvl, (h, w) in enumerate(SHAPES):
        m = torch.ones(2, h, w, dtype=torch.bool)
        for n in range(2):
            vh, vw = VALID[n][lvl]
            m[n, :vh, :vw] = False
        masks.append(m)
    return masks


def _transformer(**kw):
    cfg = dict(
        d_model=32,
        nhead=4,
        num_encoder_layers=2,
        num_decoder_layers=3,
        dim_feedforward=64,
        dropout=0.0,
        return_intermediate_dec=True,
        num_feature_levels=2,
        dec_n_points=2,
        enc_n_points=2,
        two_stage_num_proposals=7,
    )
    cfg.update(kw)
    return DeformableTransformer(**cfg)


def _inputs(b=2, c=32):
    srcs = [torch.randn(b, c, h, w) for h, w in SHAPES]
    pos = [torch.randn(b, c, h, w) for h, w in SHAPES]
    return srcs, _masks(), pos


def _valid_ratios64():
    return torch.tensor(
        [[[vw / w, vh / h] for (vh, vw), (h, w) in zip(VALID[n], SHAPES)] for n in range(2)],
        dtype=torch.float64,
    )


def test_valid_ratios_are_unpadded_over_padded_as_w_h():
    sizes = valid_sizes(_masks())
    assert sizes.shape == (2, 2, 2)
    assert sizes[1].tolist() == [[5.0, 4.0], [3.0, 2.0]]
    ratios = sizes / torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float32)
    torch.testing.assert_close(ratios.double(), _valid_ratios64())


def test_encoder_reference_points_match_the_formula():
    ratios = _valid_ratios64()
    got = DeformableTransformerEncoder.get_reference_points(SHAPES, ratios.float())
    s = sum(h * w for h, w in SHAPES)
    assert got.shape == (2, s, 2, 2)
    expected = torch.zeros(2, s, 2, 2, dtype=torch.float64)
    for n in range(2):
        k = 0
        for lvl, (h, w) in enumerate(SHAPES):
            for y in range(h):
                for x in range(w):
                    px = (x + 0.5) / (ratios[n, lvl, 0] * w)
                    py = (y + 0.5) / (ratios[n, lvl, 1] * h)
                    for other in range(2):  # seen from every level
                        expected[n, k, other] = torch.stack(
                            [px * ratios[n, other, 0], py * ratios[n, other, 1]]
                        )
                    k += 1
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)


def _proposals_reference(memory_mask):
    """Per image, per position, in float64: (logit boxes or inf, validity)."""
    rows, valid = [], []
    for n in range(2):
        k = 0
        r, v = [], []
        for lvl, (h, w) in enumerate(SHAPES):
            vh, vw = VALID[n][lvl]
            for y in range(h):
                for x in range(w):
                    box = torch.tensor(
                        [(x + 0.5) / vw, (y + 0.5) / vh, 0.05 * 2**lvl, 0.05 * 2**lvl], dtype=torch.float64
                    )
                    ok = bool(((box > 0.01) & (box < 0.99)).all()) and not bool(memory_mask[n, k])
                    r.append(
                        torch.log(box / (1 - box)) if ok else torch.full((4,), math.inf, dtype=torch.float64)
                    )
                    v.append(ok)
                    k += 1
        rows.append(torch.stack(r))
        valid.append(torch.tensor(v))
    return torch.stack(rows), torch.stack(valid)


@pytest.mark.parametrize("pass_sizes", [True, False])
def test_two_stage_proposals_on_a_padded_batch(pass_sizes):
    t = _transformer(two_stage=True)
    masks = _masks()
    mask_flatten = torch.cat([m.flatten(1) for m in masks], 1)
    memory = torch.randn(2, mask_flatten.shape[1], 32)
    sizes = valid_sizes(masks) if pass_sizes else None
    out_memory, proposals = t.gen_encoder_output_proposals(memory, mask_flatten, SHAPES, sizes)
    ref, valid = _proposals_reference(mask_flatten)
    assert torch.equal(torch.isinf(proposals), torch.isinf(ref))
    assert valid.any() and (~valid).any()  # the batch has padded and out-of-range positions
    torch.testing.assert_close(proposals[valid].double(), ref[valid], rtol=1e-5, atol=1e-5)
    # memory is zeroed where a proposal is unusable before the projection + norm
    zeroed = memory.masked_fill(~valid[..., None], 0.0)
    torch.testing.assert_close(out_memory, t.enc_output_norm(t.enc_output(zeroed)))


def test_proposal_pos_embed_matches_the_formula():
    t = _transformer(two_stage=True)
    logits = torch.randn(2, 3, 4)
    got = t.get_proposal_pos_embed(logits)
    assert got.shape == (2, 3, 64)  # 2 * d_model: d_model / 2 features per coordinate
    f = 16
    for i in range(f):
        freq = 10000 ** (2 * (i // 2) / f)
        fn = torch.sin if i % 2 == 0 else torch.cos
        for coord in range(4):
            torch.testing.assert_close(
                got[..., coord * f + i], fn(logits[..., coord].sigmoid() * 2 * math.pi / freq)
            )


def test_one_stage_forward_shapes_and_indices():
    t = _transformer()
    srcs, masks, pos = _inputs()
    query = torch.randn(5, 64)
    out = t.forward_features(srcs, masks, pos, query)
    s = 6 * 8 + 3 * 4
    assert out.hs.shape == (3, 2, 5, 32) and out.memory.shape == (2, s, 32)
    assert out.init_reference.shape == (2, 5, 2) and out.inter_references.shape == (3, 2, 5, 2)
    assert out.spatial_shapes.tolist() == [[6, 8], [3, 4]] and out.level_start_index.tolist() == [0, 48]
    assert out.enc_outputs_class is None and out.mask_flatten.shape == (2, s)
    torch.testing.assert_close(out.valid_ratios.double(), _valid_ratios64())
    # reference points come from the query_pos half of the query embedding
    torch.testing.assert_close(out.init_reference[0], t.reference_points(query[:, :32]).sigmoid())
    # without refinement every layer keeps the initial reference
    assert all(torch.equal(r, out.init_reference) for r in out.inter_references)
    assert len(t(srcs, masks, pos, query)) == 5
    with pytest.raises(ValueError, match="query_embed"):
        t.forward_features(srcs, masks, pos, None)


def _attach_heads(t, n, num_classes=3):
    t.decoder.bbox_embed = nn.ModuleList(MLP(32, 32, 4, 3) for _ in range(n))
    t.decoder.class_embed = nn.ModuleList(nn.Linear(32, num_classes) for _ in range(n))
    t.decoder.refine = True


@pytest.mark.parametrize("two_stage", [False, True])
def test_decoder_refinement_and_scaled_references(two_stage):
    t = _transformer(two_stage=two_stage)
    _attach_heads(t, 3 + two_stage)
    captured = []
    for layer in t.decoder.layers:
        layer.cross_attn.register_forward_pre_hook(lambda mod, args: captured.append(args[1]))
    srcs, masks, pos = _inputs()
    out = t.forward_features(srcs, masks, pos, None if two_stage else torch.randn(5, 64))
    refs = [out.init_reference] + list(out.inter_references)
    ratios = out.valid_ratios
    for lid in range(3):
        prev = refs[lid]
        delta = t.decoder.bbox_embed[lid](out.hs[lid])
        if prev.shape[-1] == 2:  # one-stage: points become boxes after the first layer
            expected = torch.cat([delta[..., :2] + inverse_sigmoid(prev), delta[..., 2:]], -1).sigmoid()
            scale = ratios
        else:
            expected = (delta + inverse_sigmoid(prev)).sigmoid()
            scale = torch.cat([ratios, ratios], -1)
        torch.testing.assert_close(refs[lid + 1], expected)
        assert not refs[lid + 1].requires_grad  # detached between layers
        torch.testing.assert_close(captured[lid], prev[:, :, None] * scale[:, None])


def test_two_stage_takes_top_k_of_the_first_class_logit():
    t = _transformer(two_stage=True)
    _attach_heads(t, 4)
    srcs, masks, pos = _inputs()
    out = t.forward_features(srcs, masks, pos)
    mask_flatten = torch.cat([m.flatten(1) for m in masks], 1)
    out_memory, proposals = t.gen_encoder_output_proposals(out.memory, mask_flatten, SHAPES)
    torch.testing.assert_close(out.enc_outputs_class, t.decoder.class_embed[3](out_memory))
    torch.testing.assert_close(out.enc_outputs_coord_unact, t.decoder.bbox_embed[3](out_memory) + proposals)
    for n in range(2):
        order = out.enc_outputs_class[n, :, 0].argsort(descending=True)[:7]
        torch.testing.assert_close(out.init_reference[n], out.enc_outputs_coord_unact[n, order].sigmoid())
    assert out.init_reference.shape == (2, 7, 4) and out.hs.shape == (3, 2, 7, 32)


def test_initialisation():
    torch.manual_seed(1)
    t = DeformableTransformer(
        d_model=256, nhead=8, num_encoder_layers=1, num_decoder_layers=1, num_feature_levels=4,
        batchformer=BatchFormerConfig((0,)),
    )
    attn = t.encoder.layers[0].self_attn
    assert isinstance(attn, MSDeformAttn)
    assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()
    assert not t.reference_points.bias.any()
    bound = math.sqrt(6 / (256 + 2))
    assert t.reference_points.weight.abs().max() <= bound
    # xavier on every matrix, BatchFormer included: larger than nn.Linear's default bound 1/sqrt(256)
    assert t.bf.linear1.weight.abs().max() > 1 / 16
    assert t.encoder.layers[0].linear1.weight.abs().max() > 1 / 16
    assert t.level_embed.std() > 0.8  # standard normal


def _edge_query(t, n_queries=5):
    """A query embedding whose reference points sit 0.25 % inside the right/bottom edge, where
    float16 keeps two significant digits of 1 - x."""
    query = torch.randn(n_queries, 64)
    with torch.no_grad():
        t.reference_points.weight.zero_()
        t.reference_points.bias.fill_(6.0)  # sigmoid(6) = 0.99753
    return query


def test_one_stage_reference_points_in_float32_are_unchanged():
    """Without autocast the reference points are exactly sigmoid(Linear(query_pos)) in float32, and the
    decoder sees them bit for bit; a float64 recomputation agrees to float32 precision."""
    torch.manual_seed(3)
    t = _transformer()
    srcs, masks, pos = _inputs()
    query = torch.randn(5, 64)
    out = t.forward_features(srcs, masks, pos, query)
    query_pos = query[:, :32][None].expand(2, -1, -1)
    expected = nn.functional.linear(query_pos, t.reference_points.weight, t.reference_points.bias).sigmoid()
    assert out.init_reference.dtype == torch.float32 and torch.equal(out.init_reference, expected)
    w64, b64 = t.reference_points.weight.double(), t.reference_points.bias.double()
    torch.testing.assert_close(out.init_reference.double(), torch.sigmoid(query_pos.double() @ w64.T + b64))
    hs, _ = t.decoder(query[:, 32:][None].expand(2, -1, -1), expected, out.memory, out.spatial_shapes,
                      out.level_start_index, out.valid_ratios, query_pos, out.mask_flatten)
    assert torch.equal(out.hs, hs)


@pytest.mark.parametrize("refine", [False, True])
def test_one_stage_reference_points_survive_float16_autocast_near_the_edge(refine):
    """Under float16 autocast (and GradScaler's initial scale 2**16) the gradient through
    inverse_sigmoid of a point near the edge stayed finite only if the points are float32."""
    torch.manual_seed(4)
    t = _transformer()
    if refine:
        _attach_heads(t, 3)
    srcs, masks, pos = _inputs()
    query = _edge_query(t)
    with torch.autocast("cpu", dtype=torch.float16):
        assert t.reference_points(query[:, :32]).dtype == torch.float16  # autocast is really on
        out = t.forward_features(srcs, masks, pos, query)
        # what the detection head does with the initial reference (models.deformable_detr._apply_reference)
        loss = inverse_sigmoid(out.init_reference).mean() + out.hs.float().mean()
    (loss * 2.0**16).backward()
    assert t.reference_points.bias.grad.isfinite().all(), "GradScaler would skip this step"
    assert all(p.grad.isfinite().all() for p in t.parameters() if p.grad is not None)
    assert out.init_reference.dtype == torch.float32 and out.inter_references.dtype == torch.float32
    torch.testing.assert_close(out.init_reference, torch.full_like(out.init_reference, 6.0).sigmoid())


def test_two_stage_reference_points_are_float32_under_float16_autocast():
    torch.manual_seed(5)
    t = _transformer(two_stage=True)
    _attach_heads(t, 4)
    srcs, masks, pos = _inputs()
    with torch.autocast("cpu", dtype=torch.float16):
        out = t.forward_features(srcs, masks, pos)
        loss = inverse_sigmoid(out.init_reference).mean() + out.hs.float().mean()
    assert out.init_reference.dtype == torch.float32 and out.inter_references.dtype == torch.float32
    assert out.enc_outputs_coord_unact.dtype == torch.float32
    (loss * 2.0**16).backward()
    assert all(p.grad.isfinite().all() for p in t.parameters() if p.grad is not None)


def test_two_stage_with_more_queries_than_encoder_positions_names_the_flag():
    t = _transformer(two_stage=True, two_stage_num_proposals=6 * 8 + 3 * 4 + 1)
    _attach_heads(t, 4)
    with pytest.raises(ValueError, match=r"--num_queries \(61\).*60 encoder positions"):
        t.forward_features(*_inputs())
