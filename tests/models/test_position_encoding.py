"""Position encodings against a float64 loop written from the formulas in docs/design/model.md."""

import math

import pytest
import torch

from models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine, build_position_encoding
from util.args import get_args_parser
from util.misc import NestedTensor

pytestmark = pytest.mark.usefixtures("one_thread")


def _padded_mask(sizes, h, w):
    mask = torch.ones(len(sizes), h, w, dtype=torch.bool)
    for m, (hi, wi) in zip(mask, sizes):
        m[:hi, :wi] = False
    return mask


def _sine_reference(mask, num_pos_feats, temperature=10000.0, scale=2 * math.pi, offset=0.5):
    b, h, w = mask.shape
    out = torch.zeros(b, 2 * num_pos_feats, h, w, dtype=torch.float64)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                # cumulative counts of unpadded pixels up to (y, x), normalised by the last one
                cy = float((~mask[n, : y + 1, x]).sum())
                cx = float((~mask[n, y, : x + 1]).sum())
                ly = float((~mask[n, :, x]).sum())
                lx = float((~mask[n, y, :]).sum())
                ey = (cy - offset) / (ly + 1e-6) * scale
                ex = (cx - offset) / (lx + 1e-6) * scale
                for i in range(num_pos_feats):
                    freq = temperature ** (2 * (i // 2) / num_pos_feats)
                    f = math.sin if i % 2 == 0 else math.cos
                    out[n, i, y, x] = f(ey / freq)
                    out[n, num_pos_feats + i, y, x] = f(ex / freq)
    return out


@pytest.mark.parametrize("offset", [0.5, 0.0])  # Deformable DETR's pixel centres; DETR's (no offset)
def test_sine_matches_formula_on_padded_batch(offset):
    mask = _padded_mask([(5, 7), (3, 4)], 5, 7)
    x = torch.zeros(2, 3, 5, 7)
    pos = PositionEmbeddingSine(8, normalize=True, offset=offset)(NestedTensor(x, mask))
    assert pos.shape == (2, 16, 5, 7) and pos.dtype == torch.float32
    ref = _sine_reference(mask, 8, offset=offset)
    # Padded pixels hold sines of ~1e6 radians (count 0 over 1e-6): only the image pixels matter.
    keep = ~mask[:, None].expand_as(pos)
    torch.testing.assert_close(pos.double()[keep], ref[keep], atol=2e-5, rtol=0)


def test_sine_unpadded_image_does_not_depend_on_padding():
    x = torch.zeros(1, 3, 4, 6)
    alone = PositionEmbeddingSine(16, normalize=True)(NestedTensor(x, _padded_mask([(4, 6)], 4, 6)))
    padded = PositionEmbeddingSine(16, normalize=True)(
        NestedTensor(torch.zeros(1, 3, 9, 11), _padded_mask([(4, 6)], 9, 11))
    )
    torch.testing.assert_close(padded[..., :4, :6], alone)


def test_sine_needs_normalize_with_scale_and_a_mask():
    with pytest.raises(ValueError, match="normalize"):
        PositionEmbeddingSine(8, normalize=False, scale=1.0)
    with pytest.raises(ValueError, match="mask"):
        PositionEmbeddingSine(8, normalize=True)(NestedTensor(torch.zeros(1, 3, 2, 2), None))


def test_learned_is_column_then_row_embedding():
    enc = PositionEmbeddingLearned(6)
    pos = enc(NestedTensor(torch.zeros(2, 3, 4, 5), _padded_mask([(4, 5), (2, 2)], 4, 5)))
    assert pos.shape == (2, 12, 4, 5)
    for y in range(4):
        for x in range(5):
            torch.testing.assert_close(pos[1, :6, y, x], enc.col_embed.weight[x])
            torch.testing.assert_close(pos[1, 6:, y, x], enc.row_embed.weight[y])
    assert [k for k in enc.state_dict()] == ["row_embed.weight", "col_embed.weight"]


def test_learned_rejects_maps_larger_than_its_table():
    with pytest.raises(ValueError, match="--position_embedding sine"):
        PositionEmbeddingLearned(4)(NestedTensor(torch.zeros(1, 3, 51, 4), _padded_mask([(51, 4)], 51, 4)))


def test_build_from_flags():
    args = get_args_parser().parse_args(["--hidden_dim", "64"])
    enc = build_position_encoding(args)
    assert isinstance(enc, PositionEmbeddingSine) and enc.num_pos_feats == 32 and enc.normalize
    assert enc.scale == pytest.approx(2 * math.pi) and enc.offset == 0.5
    assert build_position_encoding(args, sine_offset=0.0).offset == 0.0  # DETR's normalisation
    args = get_args_parser().parse_args(["--hidden_dim", "64", "--position_embedding", "learned"])
    assert isinstance(build_position_encoding(args), PositionEmbeddingLearned)
    args.position_embedding = "fourier"
    with pytest.raises(ValueError, match="--position_embedding"):
        build_position_encoding(args)
