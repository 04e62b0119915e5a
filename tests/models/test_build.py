"""models.build_model: what it returns and the flags it rejects."""

import pytest
import torch

from models import build_model
from models.build import build
from models.criterion import SetCriterion
from models.deformable_detr import DeformableDETR, PostProcess
from tests.tiny_model import tiny_flags
from util.args import get_args_parser
from util.metadata import DatasetMetadata

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = tiny_flags(
    "--enc_layers", "2", "--dec_layers", "3", "--num_queries", "5", "--nheads", "4",
    "--num_feature_levels", "4", "--dec_n_points", "4", "--enc_n_points", "4"
)


def _args(*flags):
    return get_args_parser().parse_args([*SMALL, *flags])


def test_returns_model_criterion_postprocessors():
    model, criterion, postprocessors = build_model(_args())
    assert isinstance(model, DeformableDETR) and isinstance(criterion, SetCriterion)
    assert isinstance(postprocessors["bbox"], PostProcess) and list(postprocessors) == ["bbox"]
    assert criterion.num_classes == 20 and model.class_embed[0].out_features == 20
    w = criterion.weight_dict
    assert (w["loss_ce"], w["loss_bbox"], w["loss_giou"]) == (2, 5, 2)
    assert {"loss_ce_0", "loss_bbox_1", "loss_giou_enc"} <= set(w) and "loss_ce_2" not in w
    assert criterion.losses == ["labels", "boxes", "cardinality"] and criterion.classification.alpha == 0.25
    _, criterion, _ = build_model(_args("--no_aux_loss"))
    assert set(criterion.weight_dict) == {"loss_ce", "loss_bbox", "loss_giou"}


def test_focal_alpha_sets_the_loss_and_leaves_the_matcher_published():
    """The public matchers keep alpha 0.25 in their focal cost whatever --focal_alpha says (issue 23, 9)."""
    _, criterion, post = build_model(_args("--focal_alpha", "0.5"))
    assert criterion.classification.alpha == 0.5 and criterion.matcher.classification.cost_alpha == 0.25
    assert criterion.matcher.classification is criterion.classification is post["bbox"].classification
    g = torch.Generator().manual_seed(0)
    outputs = {"pred_logits": torch.randn(1, 5, 20, generator=g),
               "pred_boxes": torch.rand(1, 5, 4, generator=g)}
    target = [{"labels": torch.tensor([3, 7]), "boxes": torch.rand(2, 4, generator=g)}]
    _, published, _ = build_model(_args())
    assert criterion(outputs, target)["loss_ce"] != published(outputs, target)["loss_ce"]
    ours, theirs = criterion.matcher(outputs, target), published.matcher(outputs, target)
    for (rows, cols), (rows0, cols0) in zip(ours, theirs):
        assert torch.equal(rows, rows0) and torch.equal(cols, cols0)


def test_model_options_follow_the_flags():
    model, _, _ = build_model(_args("--num_queries", "7", "--lr_backbone", "0"))
    assert model.query_embed.weight.shape == (7, 64)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert model.transformer.encoder.layers[0].self_attn.n_points == 4
    assert len(model.transformer.decoder.layers) == 3 and model.transformer.level_embed.shape == (4, 32)


def test_build_returns_the_resolved_insert_indices_and_leaves_args_alone(capsys):
    args = _args("--bf", "1")
    built = build(args, DatasetMetadata(20))
    assert built.batchformer.positions == (0,) and "--insert_idx 0" in capsys.readouterr().out
    assert args.insert_idx is None
    args = _args("--bf", "1", "--insert_idx", "1", "--insert_idx", "0", "1", "--share_bf", "0")
    flags = vars(args).copy()
    model, _, _ = build_model(args)
    assert vars(args) == flags and list(model.transformer.bf) == ["0", "1"]
    assert build(args, DatasetMetadata(20)).batchformer.positions == (0, 1)


def test_metadata_sets_the_classes_and_the_panoptic_postprocessor():
    thing = {1: True, 7: False}
    flags = _args("--masks", "--num_feature_levels", "3")
    model, criterion, post = build_model(flags, DatasetMetadata(9, thing))
    assert model.detr.class_embed[0].out_features == 9 and criterion.num_classes == 9
    assert post["panoptic"].is_thing_map == thing
    _, _, post = build_model(flags, DatasetMetadata(9))
    assert "panoptic" not in post and "segm" in post


def test_unknown_dataset_file_names_the_choices():
    with pytest.raises(ValueError, match="'voc' is not supported; choose one of coco, coco_panoptic, toy"):
        build_model(_args("--dataset_file", "voc"))


def test_namespace_without_newer_flags_takes_the_parser_defaults():
    args = _args()
    for name in ("share_bf", "bt_num_layers", "eval_bf", "no_pretrained_backbone"):
        delattr(args, name)
    model, _, _ = build_model(args)
    assert model.transformer.batchformer is None and not hasattr(args, "share_bf")


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--bf", "2"], "--bf"),
        (["--bf", "-1"], "--bf"),
        (["--bf", "1", "--insert_idx", "2"], "--insert_idx"),  # only 2 encoder layers
        (["--bf", "1", "--insert_idx", "-1"], "--insert_idx"),
        (["--bf", "1", "--share_bf", "3"], "--share_bf"),
        (["--bf", "1", "--bt_num_layers", "0"], "--bt_num_layers"),
        (["--backbone", "resnet7"], "--backbone"),
        (["--frozen_weights", "detr.pth"], "--frozen_weights"),
        (["--num_feature_levels", "2"], "--num_feature_levels"),
        (["--hidden_dim", "36"], "--hidden_dim"),
    ],
)
def test_bad_flags_name_the_flag(flags, flag):
    with pytest.raises(ValueError, match=flag):
        build_model(_args(*flags))


def test_hyphenated_batchformer_flags():
    args = get_args_parser().parse_args(
        [*SMALL, "--bf", "1", "--insert-idx", "1", "--share-bf", "0", "--eval-bf"]
    )
    model, _, _ = build_model(args)
    assert model.transformer.batchformer.eval_bf and list(model.transformer.bf) == ["1"]
    model.eval()
    with torch.no_grad():
        out = model([torch.randn(3, 64, 64), torch.randn(3, 32, 48)])
    assert out["pred_logits"].shape == (2, 5, 20)
