"""The detector: every configuration runs forward and backward; heads, init and outputs."""

import math

import pytest
import torch
from torch import nn

from models import build_model
from models.deformable_detr import MLP, DeformableDETR, num_classes_for
from tests.tiny_model import tiny_flags
from util.args import get_args_parser
from util.misc import inverse_sigmoid, nested_tensor_from_tensor_list

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = tiny_flags(
    "--enc_layers", "2", "--dec_layers", "3", "--num_queries", "5", "--nheads", "4",
    "--num_feature_levels", "4"
)
CONFIGS = {
    "multi_scale": [],
    "single_scale": ["--num_feature_levels", "1"],
    "five_levels": ["--num_feature_levels", "5"],
    "refine": ["--with_box_refine"],
    "two_stage": ["--with_box_refine", "--two_stage"],
    "two_stage_no_refine": ["--two_stage"],
    "learned_pos": ["--position_embedding", "learned"],
    "no_aux": ["--no_aux_loss"],
    "bf": ["--bf", "1", "--insert_idx", "0"],
    "bf_noshare_multi_deep": [
        "--bf",
        "1",
        "--insert_idx",
        "1",
        "0",
        "--share_bf",
        "0",
        "--bt_num_layers",
        "2",
    ],
    "bf_two_stage_eval_bf": ["--with_box_refine", "--two_stage", "--bf", "1", "--share_bf", "0", "--eval_bf"],
}


def _build(*flags):
    torch.manual_seed(0)
    return build_model(get_args_parser().parse_args([*SMALL, *flags]))


def _images():
    return [torch.randn(3, 32, 48), torch.randn(3, 24, 32)]


def _targets():
    return [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.1]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])},
    ]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_and_backward(name):
    flags = CONFIGS[name]
    model, criterion, postprocessors = _build(*flags)
    model.train()
    out = model(_images())
    streams = 2 if "--bf" in flags else 1
    b = 2 * streams
    assert out["pred_logits"].shape == (b, 5, 20) and out["pred_boxes"].shape == (b, 5, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert len(out.get("aux_outputs", [])) == (0 if "--no_aux_loss" in flags else 2)
    assert ("enc_outputs" in out) == ("--two_stage" in flags)
    losses = criterion(out, _targets())
    loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable if n.startswith("backbone.0")
    )
    assert model.query_embed.weight.grad is not None if "--two_stage" not in flags else True
    model.eval()
    with torch.no_grad():
        out = model(_images())
    assert out["pred_logits"].shape == (2, 5, 20)
    results = postprocessors["bbox"](out, torch.tensor([[480, 640], [360, 480]]))
    assert len(results) == 2 and results[0]["boxes"].shape == (100, 4)


def test_dc5_forward():
    model, _, _ = _build(
        "--backbone", "resnet50", "--dilation", "--num_feature_levels", "1", "--lr_backbone", "0"
    )
    out = model(nested_tensor_from_tensor_list([torch.randn(3, 64, 64)]))
    assert out["pred_boxes"].shape == (1, 5, 4)


def test_list_and_nested_tensor_inputs_agree():
    model = _build()[0].eval()
    images = _images()
    with torch.no_grad():
        a = model(images)
        b = model(nested_tensor_from_tensor_list(images))
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"])


def test_heads_initialisation():
    model = _build()[0]
    bias = -math.log((1 - 0.01) / 0.01)
    head = model.class_embed[0]
    assert all(m is head for m in model.class_embed) and len(model.class_embed) == 3
    assert torch.allclose(head.bias, torch.full_like(head.bias, bias))
    last = model.bbox_embed[0].layers[-1]
    assert not last.weight.any() and last.bias.tolist() == [0.0, 0.0, -2.0, -2.0]
    assert model.transformer.decoder.bbox_embed is None and not model.transformer.decoder.refine
    for proj in model.input_proj:
        assert not proj[0].bias.any() and isinstance(proj[1], nn.GroupNorm)

    refine = _build("--with_box_refine")[0]
    assert len({id(m) for m in refine.class_embed}) == 3
    assert refine.bbox_embed[0].layers[-1].bias.tolist() == [0.0, 0.0, -2.0, -2.0]
    assert all(not m.layers[-1].bias.any() for m in refine.bbox_embed[1:])
    assert all(torch.allclose(m.bias, torch.full_like(m.bias, bias)) for m in refine.class_embed)
    assert refine.transformer.decoder.bbox_embed is refine.bbox_embed and refine.transformer.decoder.refine

    two = _build("--with_box_refine", "--two_stage")[0]
    assert len(two.bbox_embed) == 4 and all(not m.layers[-1].bias.any() for m in two.bbox_embed)
    assert two.transformer.decoder.class_embed is two.class_embed and not hasattr(two, "query_embed")


@pytest.mark.parametrize("flags", [[], ["--with_box_refine"], ["--with_box_refine", "--two_stage"]])
def test_predictions_refine_the_reference_of_their_layer(flags):
    model = _build(*flags)[0].eval()
    with torch.no_grad():
        out, state = model.forward_with_state(_images())
        t = state.transformer
        refs = [t.init_reference] + list(t.inter_references)
        outputs = [*out["aux_outputs"], out]
        for lvl in range(3):
            delta = model.bbox_embed[lvl](t.hs[lvl])
            ref = inverse_sigmoid(refs[lvl])
            if ref.shape[-1] == 2:
                delta[..., :2] += ref
            else:
                delta += ref
            torch.testing.assert_close(outputs[lvl]["pred_boxes"], delta.sigmoid())
            torch.testing.assert_close(outputs[lvl]["pred_logits"], model.class_embed[lvl](t.hs[lvl]))
        if "--two_stage" in flags:
            torch.testing.assert_close(out["enc_outputs"]["pred_boxes"], t.enc_outputs_coord_unact.sigmoid())


def test_state_for_a_mask_head():
    model = _build("--bf", "1")[0].train()
    out, state = model.forward_with_state(_images())
    t = state.transformer
    assert len(state.features) == 3 and state.features[0].tensors.shape == (2, 128, 4, 6)
    assert len(state.srcs) == 4 and [m.shape[0] for m in state.masks] == [2] * 4
    s = int(t.spatial_shapes.prod(1).sum())
    assert t.memory.shape == (4, s, 32) and t.mask_flatten.shape == (4, s) and t.hs.shape == (3, 4, 5, 32)
    assert t.level_start_index.tolist() == [0, 24, 30, 32]
    assert torch.equal(t.mask_flatten[:2], t.mask_flatten[2:])


def test_outputs_state_the_number_of_streams():
    model = _build("--bf", "1")[0].train()
    out = model(_images())
    assert out["num_streams"] == 2 and out["pred_logits"].shape[0] == 4
    with torch.no_grad():
        assert model.eval()(_images())["num_streams"] == 1
    plain = _build()[0].train()
    assert plain(_images())["num_streams"] == 1


def test_mlp_and_num_classes():
    mlp = MLP(4, 8, 2, 3)
    x = torch.randn(5, 4)
    a, b, c = mlp.layers
    torch.testing.assert_close(mlp(x), c(torch.relu(b(torch.relu(a(x))))))
    args = get_args_parser().parse_args([])
    assert num_classes_for(args) == 91
    args.dataset_file = "coco_panoptic"
    assert num_classes_for(args) == 250
    args.dataset_file = "toy"
    assert num_classes_for(args) == 20


def test_too_few_feature_levels_for_the_backbone():
    with pytest.raises(ValueError, match="--num_feature_levels"):
        _build("--num_feature_levels", "2", "--masks")


def test_model_class_is_public():
    assert issubclass(DeformableDETR, nn.Module)
