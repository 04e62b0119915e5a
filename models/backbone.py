"""The ResNet backbone and its position encoding.

``build_backbone(args)`` returns a ``Joiner``: ``joiner[0]`` is the ResNet (state-dict prefix
``backbone.0.body.*``), ``joiner[1]`` the position encoding. It maps a padded batch to a list of
feature maps (strides 8/16/32, or 32 only when single-scale) with their masks and encodings.
``Backbone.output_shape()`` states the stride and channels of every map it returns, including the
stride-4 map that the mask head asks for (``STRIDE4``), which the detector itself does not project.

Building loads no weights: ``load_pretrained_backbone(model, args)`` loads the ImageNet ones afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from models.backbone_catalog import RESNETS, backbone_problem
from models.position_encoding import build_position_encoding
from util.checkpoint import CheckpointError, LoadReport, load_checkpoint
from util.misc import NestedTensor

_STEM = ("conv1", "bn1", "relu", "maxpool")
# Name of the extra stride-4 map in the backbone's outputs (the mask head's finest input).
STRIDE4 = "stride4"


@dataclass(frozen=True)
class LevelShape:
    """One returned feature map: its stride (input pixels per feature pixel) and its channels."""

    stride: int
    channels: int


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, stored as buffers (never trained).

    Batches per GPU are too small for batch statistics, so the ImageNet ones are kept.
    """

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # torchvision's BatchNorm2d checkpoints carry a counter this module has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return torch.addcmul(shift[None, :, None, None], x, scale[None, :, None, None])

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class ResNetBody(nn.ModuleDict):
    """The ResNet trunk up to its last requested stage; returns the requested stages by name."""

    def __init__(self, resnet: nn.Module, return_layers: dict[str, str]) -> None:
        last = max(int(name[-1]) for name in return_layers)
        names = [*_STEM, *(f"layer{i}" for i in range(1, last + 1))]
        super().__init__({name: getattr(resnet, name) for name in names})
        self.return_layers = dict(return_layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class Backbone(nn.Module):
    """A torchvision ResNet with frozen batch norm; the stem and layer1 never train.

    Returns layer2-4 (named "0", "1", "2") when ``return_interm_layers``, else layer4 ("0"), and
    layer1 as ``STRIDE4`` when ``return_stride4``. Weights are random (torchvision's initialisation)
    until ``load_imagenet_weights``.
    """

    def __init__(
        self,
        name: str,
        train_backbone: bool,
        return_interm_layers: bool,
        dilation: bool,
        return_stride4: bool = False,
    ) -> None:
        super().__init__()
        problem = backbone_problem(name, dilation)
        if problem:
            raise ValueError(problem)
        resnet = getattr(torchvision.models, name)(
            weights=None, replace_stride_with_dilation=[False, False, dilation], norm_layer=FrozenBatchNorm2d
        )
        del resnet.fc  # the classifier is not part of the detector
        self.name = name
        for pname, p in resnet.named_parameters():
            if not train_backbone or not pname.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
        channels = RESNETS[name][0]
        if return_interm_layers:
            return_layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
            self.strides = [8, 16, 32]
            self.num_channels = list(channels[1:])
        else:
            return_layers = {"layer4": "0"}
            self.strides = [32]
            self.num_channels = [channels[-1]]
        if dilation:
            self.strides[-1] //= 2
        shapes = {str(i): LevelShape(s, c) for i, (s, c) in enumerate(zip(self.strides, self.num_channels))}
        if return_stride4:
            return_layers = {"layer1": STRIDE4, **return_layers}
            shapes = {STRIDE4: LevelShape(4, channels[0]), **shapes}
        self._output_shape = shapes
        self.body = ResNetBody(resnet, return_layers)

    def output_shape(self) -> dict[str, LevelShape]:
        """Every map ``forward`` returns, by name, finest first. ``strides`` / ``num_channels`` list the
        levels the detector projects ("0", "1", ...); ``STRIDE4`` is there only when asked for."""
        return dict(self._output_shape)

    def forward(self, tensor_list: NestedTensor) -> dict[str, NestedTensor]:
        if tensor_list.mask is None:
            raise ValueError("Backbone: the input NestedTensor has no padding mask")
        xs = self.body(tensor_list.tensors)
        mask = tensor_list.mask[None].float()  # (1, B, H, W): interpolate wants a channel dim
        return {
            name: NestedTensor(x, F.interpolate(mask, size=x.shape[-2:]).to(torch.bool)[0])
            for name, x in xs.items()
        }


class Joiner(nn.Sequential):
    """(backbone, position encoding): features, masks and encodings of the levels the detector projects."""

    def __init__(self, backbone: Backbone, position_embedding: nn.Module) -> None:
        super().__init__(backbone, position_embedding)
        self.strides = backbone.strides
        self.num_channels = backbone.num_channels

    def output_shape(self) -> dict[str, LevelShape]:
        return self[0].output_shape()

    def forward(self, tensor_list: NestedTensor) -> tuple[list[NestedTensor], list[Tensor]]:
        out, pos, _ = self.forward_levels(tensor_list)
        return out, pos

    def forward_levels(
        self, tensor_list: NestedTensor
    ) -> tuple[list[NestedTensor], list[Tensor], dict[str, NestedTensor]]:
        """(levels "0", "1", ... finest first, their position encodings, the other returned maps by name
        such as ``STRIDE4``, which get no encoding)."""
        xs = self[0](tensor_list)
        levels = [str(i) for i in range(len(self.strides))]
        out = [xs[name] for name in levels]
        pos = [self[1](x).to(x.tensors.dtype) for x in out]
        extra = {name: x for name, x in xs.items() if name not in levels}
        return out, pos, extra


def load_imagenet_weights(backbone: Backbone, state_dict: dict[str, Tensor],
                          source: str = "--backbone_weights") -> None:
    """Load an ImageNet checkpoint of torchvision's ResNet (``backbone.name``) into ``backbone``; its
    classifier (fc.*) is not needed. CheckpointError (one line naming ``source``) where it does not fit."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    own = backbone.body.state_dict()
    misfit = LoadReport(mismatched=[(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                                    if k in own and v.shape != own[k].shape])
    if misfit.clean:  # the frozen batch norms drop num_batches_tracked as they load
        loaded = backbone.body.load_state_dict(state_dict, strict=False)
        misfit.missing, misfit.unexpected = list(loaded.missing_keys), list(loaded.unexpected_keys)
    if not misfit.clean:
        raise CheckpointError(f"{source} does not hold a torchvision {backbone.name} state dict: "
                              f"{misfit.describe(limit=3, sep='; ')}")


def imagenet_state_dict(args) -> dict[str, Tensor] | None:
    """The ImageNet weights the backbone starts from, or None for random weights.

    Nothing is loaded when the detector's weights replace them anyway (``--resume``,
    ``--frozen_weights``) or with ``--no_pretrained_backbone``.
    """
    if args.no_pretrained_backbone or args.resume or args.frozen_weights:
        return None
    if args.backbone_weights:
        if not os.path.isfile(args.backbone_weights):
            raise FileNotFoundError(f"--backbone_weights: no such file {args.backbone_weights!r}")
        try:  # checked as a checkpoint is: a damaged file must not train on garbage weights
            return load_checkpoint(args.backbone_weights)
        except CheckpointError as e:
            raise CheckpointError(f"--backbone_weights {args.backbone_weights}: {e}") from e
    try:
        weights = torchvision.models.get_model_weights(args.backbone).IMAGENET1K_V1
        return weights.get_state_dict(progress=False)
    except Exception as e:  # any download failure gets the same advice
        raise CheckpointError(
            f"could not download the ImageNet weights of {args.backbone} ({type(e).__name__}: {e}). "
            "Pass --backbone_weights PATH (a torchvision state-dict file) to load them from disk, "
            "or --no_pretrained_backbone to start from random weights."
        ) from e


def load_pretrained_backbone(model: nn.Module, args) -> bool:
    """Load the ImageNet weights that ``args`` asks for into every ``Backbone`` of ``model`` (built by
    ``models.build_model``, which loads none); whether anything was loaded. Reads a file or downloads."""
    backbones = [m for m in model.modules() if isinstance(m, Backbone)]
    state_dict = imagenet_state_dict(args) if backbones else None
    if state_dict is None:
        return False
    source = (f"--backbone_weights {args.backbone_weights}" if args.backbone_weights
              else f"the downloaded ImageNet weights of {args.backbone}")
    for backbone in backbones:
        load_imagenet_weights(backbone, state_dict, source)
    return True


def build_backbone(args, sine_offset: float = 0.5) -> Joiner:
    """The backbone of ``args`` with random weights: trainable layer2-4 when ``--lr_backbone`` > 0;
    intermediate levels when multi-scale or with ``--masks``, and the stride-4 map with ``--masks``.
    ``sine_offset``: the detector's normalisation of the sine position encoding (0.5 Deformable DETR's,
    0 DETR's: ``models.position_encoding.PositionEmbeddingSine``)."""
    position_embedding = build_position_encoding(args, sine_offset)
    train_backbone = args.lr_backbone > 0
    return_interm_layers = args.masks or args.num_feature_levels > 1
    backbone = Backbone(
        args.backbone,
        train_backbone,
        return_interm_layers,
        args.dilation,
        return_stride4=args.masks,
    )
    return Joiner(backbone, position_embedding)
