"""ResNet backbone: frozen batch norm, levels, masks, trainable stages and where weights come from."""

import pytest
import torch
import torchvision
from torch import nn

import models.backbone as backbone_module
from models.backbone import (
    STRIDE4,
    Backbone,
    FrozenBatchNorm2d,
    LevelShape,
    build_backbone,
    imagenet_state_dict,
    load_pretrained_backbone,
)
from util.args import get_args_parser
from util.checkpoint import CheckpointError
from util.misc import nested_tensor_from_tensor_list

pytestmark = pytest.mark.usefixtures("one_thread")


def _args(*flags):
    return get_args_parser().parse_args(["--backbone", "resnet18", "--hidden_dim", "32", *flags])


def test_frozen_batch_norm_equals_batch_norm_in_eval():
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # carries num_batches_tracked, which is dropped
    assert sorted(frozen.state_dict()) == ["bias", "running_mean", "running_var", "weight"]
    assert list(frozen.parameters()) == []
    x = torch.randn(2, 6, 5, 4)
    torch.testing.assert_close(frozen(x), bn(x))


def test_levels_strides_channels_and_masks():
    images = [torch.randn(3, 64, 80), torch.randn(3, 40, 48)]
    samples = nested_tensor_from_tensor_list(images)
    multi = Backbone("resnet18", True, True, False)
    assert multi.strides == [8, 16, 32] and multi.num_channels == [128, 256, 512]
    out = multi(samples)
    assert list(out) == ["0", "1", "2"]
    for (name, feat), stride, c in zip(out.items(), multi.strides, multi.num_channels):
        h, w = -(-64 // stride), -(-80 // stride)
        assert feat.tensors.shape == (2, c, h, w), name
        # nearest resize: feature pixel (i, j) takes the image mask at (floor(i * 64 / h), floor(j * 80 / w))
        rows = torch.tensor([int(i * 64 / h) >= 40 for i in range(h)])
        cols = torch.tensor([int(j * 80 / w) >= 48 for j in range(w)])
        assert torch.equal(feat.mask[1], rows[:, None] | cols[None, :]), name
        assert not feat.mask[0].any()
    single = Backbone("resnet18", True, False, False)
    assert single.strides == [32] and single.num_channels == [512]
    assert list(single(samples)) == ["0"]


def test_dilation_halves_the_last_stride():
    dc5 = Backbone("resnet50", True, False, True)
    assert dc5.strides == [16] and dc5.num_channels == [2048]
    out = dc5(nested_tensor_from_tensor_list([torch.randn(3, 64, 64)]))
    assert out["0"].tensors.shape == (1, 2048, 4, 4)
    with pytest.raises(ValueError, match="--dilation"):
        Backbone("resnet18", True, False, True)


def test_stem_and_layer1_never_train():
    trained = {n for n, p in Backbone("resnet18", True, True, False).named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("body.layer2", "body.layer3", "body.layer4")) for n in trained)
    assert any(n.startswith("body.layer2") for n in trained) and any(
        n.startswith("body.layer4") for n in trained
    )
    frozen = Backbone("resnet18", False, True, False)
    assert not any(p.requires_grad for p in frozen.parameters())
    joiner = build_backbone(_args("--no_pretrained_backbone", "--lr_backbone", "0"))
    assert not any(p.requires_grad for p in joiner.parameters())


def test_joiner_returns_features_and_encodings_and_keys():
    joiner = build_backbone(_args("--no_pretrained_backbone"))
    assert joiner.strides == [8, 16, 32] and joiner.num_channels == [128, 256, 512]
    features, pos = joiner(nested_tensor_from_tensor_list([torch.randn(3, 64, 80)]))
    assert [p.shape for p in pos] == [(1, 32, 8, 10), (1, 32, 4, 5), (1, 32, 2, 3)]
    assert [f.tensors.shape[1] for f in features] == [128, 256, 512]
    keys = list(joiner.state_dict())
    assert keys[0] == "0.body.conv1.weight" and all(k.startswith("0.body.") for k in keys)
    assert not any("fc." in k or "num_batches_tracked" in k for k in keys)
    single = build_backbone(_args("--no_pretrained_backbone", "--num_feature_levels", "1"))
    assert single.strides == [32]
    masks = build_backbone(_args("--no_pretrained_backbone", "--num_feature_levels", "1", "--masks"))
    assert masks.strides == [8, 16, 32]


def test_backbone_weights_file_is_loaded(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)  # with fc.* and num_batches_tracked, as torchvision's
    joiner = build_backbone(_args("--backbone_weights", str(path)))
    assert load_pretrained_backbone(joiner, _args("--backbone_weights", str(path)))
    body = joiner[0].body
    torch.testing.assert_close(body.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(body.layer3[1].bn2.running_var, reference.layer3[1].bn2.running_var)
    torch.testing.assert_close(body.layer4[0].downsample[0].weight, reference.layer4[0].downsample[0].weight)


def test_backbone_weights_errors(tmp_path):
    joiner = build_backbone(_args("--no_pretrained_backbone"))
    with pytest.raises(FileNotFoundError, match="--backbone_weights"):
        load_pretrained_backbone(joiner, _args("--backbone_weights", str(tmp_path / "missing.pth")))
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"r50.pth does not hold a torchvision resnet18 state dict"):
        load_pretrained_backbone(joiner, _args("--backbone_weights", str(path)))


def test_failed_download_names_both_flags(monkeypatch):
    def offline(name):
        raise OSError("network is unreachable")

    monkeypatch.setattr(backbone_module.torchvision.models, "get_model_weights", offline)
    with pytest.raises(RuntimeError) as info:
        imagenet_state_dict(_args())
    assert "--backbone_weights" in str(info.value) and "--no_pretrained_backbone" in str(info.value)
    # Nothing is fetched when the detector's weights replace the backbone's anyway.
    assert imagenet_state_dict(_args("--resume", "ckpt.pth")) is None
    assert imagenet_state_dict(_args("--frozen_weights", "detr.pth")) is None
    assert imagenet_state_dict(_args("--no_pretrained_backbone")) is None


def test_building_loads_no_weights(monkeypatch):
    # Without --no_pretrained_backbone the ImageNet weights are wanted, but only the caller fetches them.
    def offline(name):
        raise OSError("network is unreachable")

    monkeypatch.setattr(backbone_module.torchvision.models, "get_model_weights", offline)
    build_backbone(_args())
    with pytest.raises(RuntimeError, match="could not download"):
        load_pretrained_backbone(build_backbone(_args()), _args())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_output_shape_states_every_returned_map(name):
    backbone = Backbone(name, True, True, False, return_stride4=True)
    shapes = backbone.output_shape()
    assert list(shapes) == [STRIDE4, "0", "1", "2"]
    out = backbone(nested_tensor_from_tensor_list([torch.randn(3, 64, 96)]))
    assert list(out) == list(shapes)
    for key, shape in shapes.items():
        assert out[key].tensors.shape[1:] == (shape.channels, 64 // shape.stride, 96 // shape.stride), key
    assert shapes[STRIDE4] == LevelShape(4, out[STRIDE4].tensors.shape[1])
    assert list(Backbone(name, True, False, False).output_shape()) == ["0"]


def test_unknown_backbone():
    with pytest.raises(ValueError, match="--backbone"):
        build_backbone(get_args_parser().parse_args(["--backbone", "vgg16", "--no_pretrained_backbone"]))


def _damaged(path):
    from tests.util.test_checkpoint import _overwrite_inside_storage

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    _overwrite_inside_storage(path)
    return path


def _html(path):
    path.write_text("<html>sign in to download</html>")
    return path


def _resnet50(path):
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


BAD_BACKBONE_FILES = {"html": (_html, "is an HTML page"), "damaged": (_damaged, "is corrupt"),
                      "resnet50": (_resnet50, "does not hold a torchvision resnet18 state dict")}


@pytest.mark.parametrize("write, expected", BAD_BACKBONE_FILES.values(), ids=BAD_BACKBONE_FILES)
def test_a_bad_backbone_weights_file_ends_main_in_one_line_naming_it(tmp_path, capsys, write, expected):
    """Not a traceback, nor (for a file damaged on disk) a training run on garbage weights."""
    import main
    from tests.tiny_model import tiny_flags

    path = write(tmp_path / "resnet18.pth")
    flags = [f for f in tiny_flags("--epochs", "1", "--max_iters_per_epoch", "1", "--num_workers", "0")
             if f != "--no_pretrained_backbone"]
    with pytest.raises(SystemExit) as info:
        main.cli([*flags, "--backbone_weights", str(path)])
    message = str(info.value.code)
    assert message.startswith(f"main.py: error: --backbone_weights {path}") and expected in message, message
    assert "\n" not in message
