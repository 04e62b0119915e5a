"""BatchFormer beyond detection: the V1 plug-in on feature vectors and BatchFormerV2 in a small ViT."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.batchformer import batchformer_param_groups, build_batchformer
from models.batchformer_plugin import BatchFormerClassifier, batchformer
from models.batchformer_vit import TinyViT
from models.param_groups import is_batchformer_parameter

pytestmark = pytest.mark.usefixtures("one_thread")

C, K = 16, 5


def _no_dropout(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    return module


def _classifier(**kw) -> BatchFormerClassifier:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, C), nn.Tanh())  # no cross-sample op
    return BatchFormerClassifier(backbone, nn.Linear(C, K), dim=C, **kw)


def _reference_layer(layer: nn.TransformerEncoderLayer, x):
    """Post-norm encoder layer by hand, on x (N, C) as ONE sequence of N tokens (dropout off, ReLU)."""
    attn = layer.self_attn
    n, c = x.shape
    h = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, h, c // h).transpose(0, 1) for t in (q, k, v))  # (h, N, d)
    weights = torch.softmax(q @ k.transpose(1, 2) / (c // h) ** 0.5, dim=-1)
    a = (weights @ v).transpose(0, 1).reshape(n, c)
    x = layer.norm1(x + attn.out_proj(a))
    return layer.norm2(x + layer.linear2(torch.relu(layer.linear1(x))))


def test_functional_form_matches_the_papers_semantics():
    torch.manual_seed(1)
    encoder = _no_dropout(build_batchformer(C))
    x, y = torch.randn(6, C), torch.arange(6)
    out_x, out_y = batchformer(x, y, encoder, is_training=True)
    assert out_x.shape == (12, C) and torch.equal(out_y, torch.cat([y, y]))
    assert torch.equal(out_x[:6], x)
    assert torch.allclose(out_x[6:], _reference_layer(encoder, x), atol=1e-5)
    single_x, single_y = batchformer(x, y, encoder, is_training=True, two_stream=False)
    assert torch.allclose(single_x, _reference_layer(encoder, x), atol=1e-5) and torch.equal(single_y, y)
    assert batchformer(x, y, encoder, is_training=False) == (x, y)


def test_layer_is_the_papers_and_options_reach_it():
    layer = _classifier().bf
    assert isinstance(layer, nn.TransformerEncoderLayer)
    assert layer.self_attn.num_heads == 4 and layer.linear1.out_features == C and layer.dropout.p == 0.5
    deep = _classifier(depth=3, heads=2, dropout=0.1).bf
    first = deep.layers[0]
    assert len(deep.layers) == 3 and first.self_attn.num_heads == 2 and first.dropout.p == 0.1
    with pytest.raises(ValueError, match="feature dim must be divisible by 4"):
        BatchFormerClassifier(nn.Identity(), nn.Identity(), dim=6)
    with pytest.raises(ValueError, match="eval_mode"):
        _classifier(eval_mode="mean")


def test_eval_output_equals_the_model_without_batchformer():
    model = _classifier().eval()
    images = torch.randn(7, 3, 4)
    logits, labels = model(images, torch.arange(7))
    assert torch.equal(logits, model.classifier(model.backbone(images))) and labels.tolist() == list(range(7))


def test_training_output_is_two_streams_with_labels_doubled():
    model = _classifier().train()
    images, labels = torch.randn(7, 3, 4), torch.randint(0, K, (7,))
    logits, out_labels = model(images, labels)
    assert logits.shape == (14, K) and torch.equal(out_labels, torch.cat([labels, labels]))
    feats = model.backbone(images)
    assert torch.allclose(logits[:7], model.classifier(feats))  # stream 0: the plain model
    single, single_labels = _classifier(two_stream=False).train()(images, labels)
    assert single.shape == (7, K) and torch.equal(single_labels, labels)


def test_average_eval_ablation_averages_the_two_streams_logits():
    model = _no_dropout(_classifier(eval_mode="average")).eval()
    images = torch.randn(5, 3, 4)
    feats = model.backbone(images)
    expected = (model.classifier(feats) + model.classifier(_reference_layer(model.bf, feats))) / 2
    assert torch.allclose(model(images)[0], expected, atol=1e-5)


def test_one_samples_loss_reaches_another_sample_only_through_the_batchformer():
    model = _no_dropout(_classifier()).train()
    images = torch.randn(6, 3, 4, requires_grad=True)
    logits, labels = model(images, torch.randint(0, K, (6,)))
    stream0 = torch.autograd.grad(F.cross_entropy(logits[:1], labels[:1]), images, retain_graph=True)[0]
    assert stream0[0].abs().sum() > 0 and stream0[1:].abs().sum() == 0
    stream1 = torch.autograd.grad(F.cross_entropy(logits[6:7], labels[6:7]), images, retain_graph=True)[0]
    assert (stream1[1:].flatten(1).abs().sum(1) > 0).all()


def test_permuting_the_batch_permutes_the_output():
    model = _no_dropout(_classifier()).train()
    images, labels = torch.randn(6, 3, 4), torch.randint(0, K, (6,))
    perm = torch.randperm(6)
    logits, out_labels = model(images, labels)
    p_logits, p_labels = model(images[perm], labels[perm])
    both = torch.cat([perm, perm + 6])
    assert torch.allclose(p_logits, logits[both], atol=1e-5) and torch.equal(p_labels, out_labels[both])


def _vit(bf: bool, **kw) -> TinyViT:
    torch.manual_seed(0)
    vit = TinyViT(image_size=4, patch_size=2, dim=16, depth=3, heads=2, num_classes=K, bf=bf, **kw)
    return _no_dropout(vit)


def test_vit_two_streams_share_weights_and_stream0_is_the_plain_model():
    plain, with_bf = _vit(False), _vit(True, insert_idx=1)
    bf_names = [n for n, _ in with_bf.named_parameters() if is_batchformer_parameter(n)]
    assert bf_names and all(n.startswith("bf.") for n in bf_names)
    shared = {n: p for n, p in with_bf.named_parameters() if not is_batchformer_parameter(n)}
    assert shared.keys() == dict(plain.named_parameters()).keys()  # one set of weights for both streams
    assert all(torch.equal(p, dict(plain.named_parameters())[n]) for n, p in shared.items())
    images, labels = torch.randn(5, 1, 4, 4), torch.arange(5)
    logits, out_labels = with_bf.train()(images, labels)
    assert logits.shape == (10, K) and torch.equal(out_labels, torch.cat([labels, labels]))
    assert torch.allclose(logits[:5], plain.train()(images)[0], atol=1e-5)
    # Stream 1 by hand: blocks 0-1, then across the batch at each token position, then the rest.
    x = with_bf.embed(images)
    for block in with_bf.blocks[:2]:
        x = block(x)
    x = torch.stack([_reference_layer(with_bf.bf, x[:, t]) for t in range(x.shape[1])], dim=1)
    x = with_bf.blocks[2](x)
    assert torch.allclose(logits[5:], with_bf.head(with_bf.norm(x[:, 0])), atol=1e-5)
    assert torch.allclose(with_bf.eval()(images)[0], plain.eval()(images)[0], atol=1e-5)


def test_vit_permutation_and_gradient_isolation():
    model = _vit(True).train()
    images = torch.randn(4, 1, 4, 4, requires_grad=True)
    perm = torch.tensor([2, 0, 3, 1])
    logits = model(images)[0]
    assert torch.allclose(model(images[perm])[0], logits[torch.cat([perm, perm + 4])], atol=1e-5)
    stream0 = torch.autograd.grad(logits[0].sum(), images, retain_graph=True)[0]
    assert stream0[1:].abs().sum() == 0
    stream1 = torch.autograd.grad(logits[4].sum(), images)[0]
    assert (stream1[1:].flatten(1).abs().sum(1) > 0).all()
    with pytest.raises(ValueError, match="insert_idx"):
        TinyViT(depth=2, bf=True, insert_idx=2)


def test_learning_rate_groups_split_the_batchformer_and_keep_every_parameter_once():
    model = _classifier()
    groups = batchformer_param_groups(model, lr=1e-3, weight_decay=0.05, bf_lr_mult=0.1, bf_weight_decay=0.0)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.bf.parameters()}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    model.bf.requires_grad_(False)
    assert batchformer_param_groups(model, 1e-3, 0.0)[1]["params"] == []
