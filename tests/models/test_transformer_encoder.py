"""DETR's sequence-first encoder (models/transformer_encoder.py) against a slow float64 implementation
written from the definition, its padding, its BatchFormerV2 streams and --use_checkpoint."""
import math

import pytest
import torch

from models.batchformer import BatchFormerConfig
from models.transformer_encoder import TransformerEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

C, HEADS, S, B = 16, 2, 7, 3


def _layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.double() + norm.bias.double()


def _attention(attn, query, key, value, padding_mask):
    """nn.MultiheadAttention ``attn``'s definition, one image and one head at a time: query (L, B, C), key and
    value (S, B, C), in float64."""
    wq, wk, wv = attn.in_proj_weight.double().chunk(3)
    bq, bk, bv = attn.in_proj_bias.double().chunk(3)
    d = attn.embed_dim // attn.num_heads
    out = torch.zeros_like(query)
    for b in range(query.shape[1]):
        q, k, v = query[:, b] @ wq.T + bq, key[:, b] @ wk.T + bk, value[:, b] @ wv.T + bv
        heads = []
        for h in range(attn.num_heads):
            part = slice(h * d, (h + 1) * d)
            scores = q[:, part] @ k[:, part].T / math.sqrt(d)
            if padding_mask is not None:
                scores[:, padding_mask[b]] = -math.inf
            heads.append(scores.softmax(-1) @ v[:, part])
        out[:, b] = torch.cat(heads, -1) @ attn.out_proj.weight.double().T + attn.out_proj.bias.double()
    return out


def _ffn(layer, y):
    """linear2(relu(linear1(y))) of ``layer`` in float64."""
    hidden = (y @ layer.linear1.weight.double().T + layer.linear1.bias.double()).clamp(min=0)
    return hidden @ layer.linear2.weight.double().T + layer.linear2.bias.double()


def _reference_layer(layer, x, pos, padding_mask, pre_norm):
    def ffn(y):
        return _ffn(layer, y)

    if pre_norm:
        y = _layer_norm(x, layer.norm1)
        x = x + _attention(layer.self_attn, y + pos, y + pos, y, padding_mask)
        return x + ffn(_layer_norm(x, layer.norm2))
    x = _layer_norm(x + _attention(layer.self_attn, x + pos, x + pos, x, padding_mask), layer.norm1)
    return _layer_norm(x + ffn(x), layer.norm2)


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module.eval()


def _inputs():
    src, pos = torch.randn(S, B, C), torch.randn(S, B, C)
    padding_mask = torch.zeros(B, S, dtype=torch.bool)
    padding_mask[1, 5:] = True  # image 1 is smaller than the padded map
    padding_mask[2, 3:] = True
    return src, pos, padding_mask


@pytest.mark.parametrize("pre_norm", [False, True])
def test_the_encoder_equals_the_definition_in_float64(pre_norm):
    encoder = _randomise(TransformerEncoder(C, HEADS, num_layers=2, dim_feedforward=24, pre_norm=pre_norm))
    src, pos, padding_mask = _inputs()
    out = encoder(src, pos, padding_mask)
    expected = src.double()
    for layer in encoder.layers:
        expected = _reference_layer(layer, expected, pos.double(), padding_mask, pre_norm)
    if pre_norm:
        expected = _layer_norm(expected, encoder.norm)
    assert out.num_streams == 1 and out.pos is pos and out.padding_mask is padding_mask
    torch.testing.assert_close(out.memory.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_padded_positions_do_not_change_the_others(pre_norm):
    encoder = _randomise(TransformerEncoder(C, HEADS, num_layers=2, dim_feedforward=24, pre_norm=pre_norm))
    src, pos, padding_mask = _inputs()
    garbage = src.clone()
    garbage[5:, 1] = 100 * torch.randn(S - 5, C)
    garbage[3:, 2] = -50.0
    a, b = encoder(src, pos, padding_mask).memory, encoder(garbage, pos, padding_mask).memory
    torch.testing.assert_close(a[:5, 1], b[:5, 1])
    torch.testing.assert_close(a[:3, 2], b[:3, 2])
    torch.testing.assert_close(a[:, 0], b[:, 0])


def test_published_keys():
    keys = list(TransformerEncoder(C, HEADS, num_layers=2).state_dict())
    per_layer = ["self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                 "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
                 "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]
    assert keys == [f"layers.{i}.{k}" for i in range(2) for k in per_layer]
    pre_norm = list(TransformerEncoder(C, HEADS, num_layers=2, pre_norm=True).state_dict())
    assert pre_norm == keys + ["norm.weight", "norm.bias"]


def _across_images(bf, x):
    """The BatchFormer at each position s over the B images there: (S, B, C), one position at a time."""
    return torch.stack([bf(x[s][:, None])[:, 0] for s in range(x.shape[0])])


@pytest.mark.parametrize("positions", [(0,), (0, 2), (2,)])
def test_two_streams_after_the_planned_layers(positions):
    """Training (two streams): stream 0 is the plain encoder; stream 1 goes through the BatchFormer after
    each planned layer; the position encoding and the padding mask come back doubled."""
    config = BatchFormerConfig(positions, share=False)
    encoder = _randomise(TransformerEncoder(C, HEADS, num_layers=3, dim_feedforward=24))
    bf = _randomise(config.build(C))
    src, pos, padding_mask = _inputs()
    out = encoder(src, pos, padding_mask, batchformer=config.plan(bf, training=True))  # eval: no dropout
    plain = encoder(src, pos, padding_mask).memory
    second = src
    for i, layer in enumerate(encoder.layers):
        second = layer(second, pos, padding_mask)
        if i in positions:
            second = _across_images(bf[str(i)], second)
    assert out.num_streams == 2 and out.memory.shape == (S, 2 * B, C)
    torch.testing.assert_close(out.memory[:, :B], plain)
    torch.testing.assert_close(out.memory[:, B:], second, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pos, torch.cat([pos, pos], 1))
    assert torch.equal(out.padding_mask, torch.cat([padding_mask, padding_mask]))


def test_inference_skips_the_batchformer_unless_eval_bf():
    encoder = _randomise(TransformerEncoder(C, HEADS, num_layers=2, dim_feedforward=24, pre_norm=True))
    src, pos, padding_mask = _inputs()
    for eval_bf in (False, True):
        config = BatchFormerConfig((1,), eval_bf=eval_bf)
        bf = _randomise(config.build(C))
        out = encoder(src, pos, padding_mask, batchformer=config.plan(bf, training=False))
        assert out.num_streams == 1 and out.memory.shape == (S, B, C)
        expected = encoder.layers[1](encoder.layers[0](src, pos, padding_mask), pos, padding_mask)
        if eval_bf:  # single stream, then the final norm of pre-norm
            expected = _across_images(bf, expected)
        torch.testing.assert_close(out.memory, encoder.norm(expected), atol=1e-5, rtol=1e-5)


def test_use_checkpoint_gives_the_same_gradients_with_dropout():
    """--use_checkpoint recomputes the layers (and the BatchFormer) in the backward pass with the same
    dropout masks: the gradients are those of the stored pass."""
    config = BatchFormerConfig((0,), use_checkpoint=True)
    encoder = TransformerEncoder(C, HEADS, num_layers=2, dim_feedforward=24, dropout=0.3).train()
    bf = config.build(C).train()
    src, pos, padding_mask = _inputs()
    grads = []
    for checkpointed in (False, True):
        encoder.use_checkpoint = checkpointed
        plan = BatchFormerConfig((0,), use_checkpoint=checkpointed).plan(bf, training=True)
        encoder.zero_grad()
        bf.zero_grad()
        torch.manual_seed(3)
        out = encoder(src, pos, padding_mask, batchformer=plan)
        (out.memory * torch.linspace(-1, 1, C)).sum().backward()
        grads.append([p.grad.clone() for p in [*encoder.parameters(), *bf.parameters()]])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)

