"""DETR (models/detr.py) with BatchFormerV2: where each --bf mode runs the layer, the two training streams
(stream 0 is the plain detector, the targets doubled by the criterion), inference without the layer, the
mask head's inputs per stream, --use_checkpoint, --pre_norm and the flag checks of its mask head. The
numerics against transformers are in test_detr_vs_transformers.py."""
import pytest
import torch
from torch import nn

import models.activation_checkpoint as activation_checkpoint
from models import build_model
from tests.tiny_model import tiny_flags
from util.args import args_problem, get_args_parser, parse_args

pytestmark = pytest.mark.usefixtures("one_thread")

# Dropout off in DETR's layers (the BatchFormer keeps its 0.5): stream 0 of a training pass is then exactly
# the plain detector's inference.
FLAGS = ("--meta_arch", "detr", "--enc_layers", "3", "--dec_layers", "2", "--nheads", "8", "--dropout",
         "0", "--num_queries", "6")


def _args(*flags):
    return parse_args(get_args_parser(), tiny_flags(*FLAGS, *flags))


def _build(*flags):
    torch.manual_seed(0)
    return build_model(_args(*flags))


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(3, 64, 96, generator=g), torch.randn(3, 48, 56, generator=g)]


def _targets():
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.5, 0.3, 0.4]])
    return [{"labels": torch.tensor([3, 7]), "boxes": boxes},
            {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.6]])}]


def _plain_twin(model, *flags):
    """The detector without BatchFormerV2, with ``model``'s weights (the BatchFormer's are the only extra
    ones)."""
    plain = _build(*flags)[0]
    state = {k: v for k, v in model.state_dict().items() if "bf" not in k.split(".")}
    plain.load_state_dict(state, strict=True)
    return plain.eval()


def _bf_calls(model) -> list[int]:
    """The encoder layer after which each BatchFormer call of one training pass ran."""
    calls, layer = [], []
    for i, enc_layer in enumerate(model.transformer.encoder.layers):
        enc_layer.register_forward_hook(lambda m, inp, out, i=i: layer.__setitem__(slice(None), [i]))
    bfs = model.transformer.bf
    for bf in (bfs.values() if isinstance(bfs, nn.ModuleDict) else [bfs]):
        bf.register_forward_hook(lambda m, inp, out: calls.append(layer[0]))
    with torch.no_grad():
        model.train()(_images())
    return calls


@pytest.mark.parametrize("flags, positions", [
    (["--bf", "3"], [0, 1, 2]),  # every layer from --start_idx 0
    (["--bf", "3", "--start_idx", "1"], [1, 2]),
    (["--bf", "3", "--insert_idx", "0"], [0]),  # the paper's setting
    (["--bf", "3", "--insert_idx", "2", "--insert_idx", "0", "--share_bf", "0"], [0, 2]),
    (["--bf", "1"], [2]),  # after the whole encoder
    (["--bf", "2", "--enc_layers", "5"], [4]),  # after encoder layer 4
])
def test_each_bf_mode_runs_the_layer_after_its_encoder_layers(flags, positions):
    model = _build(*flags)[0]
    assert _bf_calls(model) == positions


def test_bf_2_needs_five_encoder_layers():
    assert "--bf 2 (two streams after encoder layer 4) needs --enc_layers above 4" in args_problem(
        _args("--bf", "2"))


@pytest.mark.parametrize("share", ["1", "0"])
def test_training_doubles_the_batch_and_inference_is_the_plain_detector(share):
    model, criterion, _ = _build("--bf", "3", "--insert_idx", "0", "--share_bf", share)
    plain = _plain_twin(model)
    images = _images()
    with torch.no_grad():
        expected = plain(images)
        out = model.train()(images)
        assert out["num_streams"] == 2 and out["pred_logits"].shape == (4, 6, 21)
        torch.testing.assert_close(out["pred_logits"][:2], expected["pred_logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out["pred_boxes"][:2], expected["pred_boxes"], atol=1e-5, rtol=0)
        assert not torch.allclose(out["pred_logits"][2:], expected["pred_logits"], atol=1e-3)
        for aux, plain_aux in zip(out["aux_outputs"], expected["aux_outputs"], strict=True):
            assert aux["pred_logits"].shape[0] == 4
            torch.testing.assert_close(aux["pred_logits"][:2], plain_aux["pred_logits"], atol=1e-5, rtol=0)
        at_inference = model.eval()(images)
    assert at_inference["num_streams"] == 1
    torch.testing.assert_close(at_inference["pred_logits"], expected["pred_logits"], atol=1e-6, rtol=0)
    torch.testing.assert_close(at_inference["pred_boxes"], expected["pred_boxes"], atol=1e-6, rtol=0)
    # Both streams are scored, and the BatchFormer learns from the second.
    model.train()
    losses = criterion(model(images), _targets())
    sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transformer.bf.parameters())


def test_the_criterion_scores_each_stream_against_the_same_targets():
    """Two identical streams cost what one does: the targets are doubled with them, and so is num_boxes."""
    model, criterion, _ = _build()
    with torch.no_grad():
        out = model.eval()(_images())

    def doubled(o):
        return {key: torch.cat([o[key]] * 2) for key in ("pred_logits", "pred_boxes")}

    two = {**doubled(out), "aux_outputs": [doubled(a) for a in out["aux_outputs"]], "num_streams": 2}
    one, both = criterion(out, _targets()), criterion(two, _targets())
    assert one.keys() == both.keys() and {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0"} <= one.keys()
    for k in one:
        torch.testing.assert_close(both[k], one[k], atol=1e-5, rtol=1e-5)


def test_eval_bf_applies_the_layer_at_inference_single_stream():
    model = _build("--bf", "3", "--insert_idx", "0", "--eval_bf", "1")[0].eval()
    plain = _plain_twin(model)
    with torch.no_grad():
        out, expected = model(_images()), plain(_images())
    assert out["num_streams"] == 1 and out["pred_logits"].shape == expected["pred_logits"].shape
    assert not torch.allclose(out["pred_logits"], expected["pred_logits"], atol=1e-3)


def test_mask_head_reads_each_streams_inputs():
    """--masks with --bf 3: the mask head's per-image inputs (the padding mask, the input projection, the
    backbone maps) serve the second stream too; stream 0's masks are the plain detector's."""
    flags = ("--masks", "--dataset_file", "toy_panoptic")
    model = _build(*flags, "--bf", "3", "--insert_idx", "0")[0]
    plain = _plain_twin(model, *flags)
    with torch.no_grad():
        expected = plain(_images())["pred_masks"]
        out = model.train()(_images())
    assert out["num_streams"] == 2 and out["pred_masks"].shape == (4, *expected.shape[1:]) == (4, 6, 16, 24)
    torch.testing.assert_close(out["pred_masks"][:2], expected, atol=1e-4, rtol=0)
    assert not torch.allclose(out["pred_masks"][2:], expected, atol=1e-3)


def test_use_checkpoint_recomputes_encoder_batchformer_and_decoder_with_the_same_gradients(monkeypatch):
    calls = []
    real = activation_checkpoint.checkpoint

    def counted(fn, *inputs, **kwargs):
        calls.append(fn)
        return real(fn, *inputs, **kwargs)

    monkeypatch.setattr(activation_checkpoint, "checkpoint", counted)
    grads = []
    for flags in ([], ["--use_checkpoint"]):
        model, criterion, _ = _build("--bf", "3", "--insert_idx", "0", "--dropout", "0.2", *flags)
        model.train()
        torch.manual_seed(5)  # the same dropout masks in both runs
        losses = criterion(model(_images()), _targets())
        sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    # 3 encoder layers, the BatchFormer after layer 0, 2 decoder layers
    assert len(calls) == 6
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_pre_norm_adds_the_encoders_final_norm_and_changes_the_outputs():
    post, pre = _build()[0].eval(), _build("--pre_norm")[0].eval()
    extra = sorted(set(pre.state_dict()) - set(post.state_dict()))
    assert extra == ["transformer.encoder.norm.bias", "transformer.encoder.norm.weight"]
    assert set(post.state_dict()) <= set(pre.state_dict())
    pre.load_state_dict({**pre.state_dict(), **post.state_dict()})
    with torch.no_grad():
        assert not torch.allclose(pre(_images())["pred_logits"], post(_images())["pred_logits"], atol=1e-3)


def test_the_mask_head_widths_are_checked_in_one_line():
    problem = args_problem(_args("--masks", "--nheads", "4"))
    assert problem.startswith("--masks: DETR's mask head normalises its stages of [36, 16, 8, 4, 2] "
                              "channels")
    assert args_problem(_args("--masks")) is None  # 32 + 8 heads
