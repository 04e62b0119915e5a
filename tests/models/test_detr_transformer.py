"""DETR's decoder and transformer (models/detr_transformer.py) against a float64 implementation of the
definition (post-norm and --pre_norm), with padded memory."""
import pytest
import torch

from models.detr_transformer import Transformer, TransformerDecoder
from tests.models.test_transformer_encoder import _attention, _ffn, _layer_norm, _randomise

pytestmark = pytest.mark.usefixtures("one_thread")

C, HEADS, S, Q, B = 16, 4, 9, 5, 2


def _reference_decoder(decoder, tgt, memory, query_pos, pos, padding_mask, pre_norm):
    """Every layer's output through the final norm, (D, Q, B, C), in float64."""
    tgt, memory, query_pos, pos = (t.double() for t in (tgt, memory, query_pos, pos))
    outputs = []
    for layer in decoder.layers:
        if pre_norm:
            y = _layer_norm(tgt, layer.norm1)
            tgt = tgt + _attention(layer.self_attn, y + query_pos, y + query_pos, y, None)
            y = _layer_norm(tgt, layer.norm2)
            tgt = tgt + _attention(layer.multihead_attn, y + query_pos, memory + pos, memory, padding_mask)
            tgt = tgt + _ffn(layer, _layer_norm(tgt, layer.norm3))
        else:
            q = tgt + query_pos
            tgt = _layer_norm(tgt + _attention(layer.self_attn, q, q, tgt, None), layer.norm1)
            cross = _attention(layer.multihead_attn, tgt + query_pos, memory + pos, memory, padding_mask)
            tgt = _layer_norm(tgt + cross, layer.norm2)
            tgt = _layer_norm(tgt + _ffn(layer, tgt), layer.norm3)
        outputs.append(_layer_norm(tgt, decoder.norm))
    return torch.stack(outputs)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_the_decoder_equals_the_definition_in_float64(pre_norm):
    decoder = _randomise(TransformerDecoder(C, HEADS, num_layers=2, dim_feedforward=24, pre_norm=pre_norm))
    tgt, query_pos = torch.randn(Q, B, C), torch.randn(Q, B, C)
    memory, pos = torch.randn(S, B, C), torch.randn(S, B, C)
    padding_mask = torch.zeros(B, S, dtype=torch.bool)
    padding_mask[1, 6:] = True
    out = decoder(tgt, memory, query_pos, pos, padding_mask)
    expected = _reference_decoder(decoder, tgt, memory, query_pos, pos, padding_mask, pre_norm)
    assert out.shape == (2, Q, B, C)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_the_transformer_starts_from_zero_targets_and_returns_the_memory_as_a_map():
    transformer = _randomise(Transformer(C, HEADS, num_encoder_layers=1, num_decoder_layers=2,
                                         dim_feedforward=24))
    src, pos = torch.randn(B, C, 3, 4), torch.randn(B, C, 3, 4)
    mask = torch.zeros(B, 3, 4, dtype=torch.bool)
    mask[1, :, 3:] = True
    query_embed = torch.randn(Q, C)
    out = transformer(src, mask, query_embed, pos)
    seq = lambda t: t.flatten(2).permute(2, 0, 1)  # (B, C, H, W) -> (HW, B, C)
    encoded = transformer.encoder(seq(src), seq(pos), mask.flatten(1))
    query_pos = query_embed[:, None].expand(-1, B, -1)
    hs = transformer.decoder(torch.zeros(Q, B, C), encoded.memory, query_pos, seq(pos), mask.flatten(1))
    assert out.num_streams == 1 and out.hs.shape == (2, B, Q, C) and out.memory.shape == (B, C, 3, 4)
    torch.testing.assert_close(out.hs, hs.transpose(1, 2))
    torch.testing.assert_close(seq(out.memory), encoded.memory)
