"""Our ResNet and position encoding (``backbone.0.body``, ``backbone.1``) in transformers' checkpoints.

transformers names the ResNet two ways: timm's (``conv1``, ``layer1.0.bn2``: torchvision's names, as
the published Deformable DETR and DETR checkpoints have it; ``from_pretrained`` then needs timm) or
its own (``embedder.embedder.convolution``, ``encoder.stages.0.layers.0.layer.1``; loads without
timm, has no dilation). In config.json: transformers 5's ``backbone_config`` (``model_type``
``timm_backbone`` or ``resnet``), or the earlier top-level ``use_timm_backbone``, ``backbone``,
``backbone_kwargs`` and ``dilation``.
"""
from __future__ import annotations

import argparse
import json

from util.hf.config import ConfigReader
from util.hf.folder import HFCheckpointError
from util.hf.spec import NameMap, Rule

# "resnet": transformers' own ResNet (loads without timm); "timm": timm's resnet, as the published
# checkpoints are (from_pretrained then needs timm installed).
BACKBONE_NAMINGS = ("resnet", "timm")

# Our torchvision ResNets: (block type, blocks per stage); hidden sizes and stem are the standard ones.
RESNETS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
}
_HIDDEN_SIZES = {"basic": [64, 128, 256, 512], "bottleneck": [256, 512, 1024, 2048]}
_STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]

_HF_BODY = "model.backbone.conv_encoder.model."
_OUR_BODY = "backbone.0.body."


def _timm_rules() -> list[Rule]:
    """timm's names are torchvision's: only the prefix changes."""
    leaves = ["conv1.weight", "bn1.{bn}", "layer{i}.{j}.downsample.0.weight",
              "layer{i}.{j}.downsample.1.{bn}"]
    leaves += [f"layer{{i}}.{{j}}.{kind}{n}.{leaf}" for n in (1, 2, 3)
               for kind, leaf in (("conv", "weight"), ("bn", "{bn}"))]
    return [Rule(_OUR_BODY + leaf, _HF_BODY + leaf) for leaf in leaves]


def _resnet_rules() -> list[Rule]:
    """torchvision's names against transformers' ResNet: ``layer2.0.downsample.1`` is
    ``encoder.stages.1.layers.0.shortcut.normalization``, ``layer1.0.conv3``
    ``encoder.stages.0.layers.0.layer.2.convolution``."""
    rules = [Rule(_OUR_BODY + "conv1.weight", _HF_BODY + "embedder.embedder.convolution.weight"),
             Rule(_OUR_BODY + "bn1.{bn}", _HF_BODY + "embedder.embedder.normalization.{bn}")]
    for stage in range(1, 5):
        ours, hf = f"{_OUR_BODY}layer{stage}.{{j}}.", f"{_HF_BODY}encoder.stages.{stage - 1}.layers.{{j}}."
        rules += [Rule(ours + "downsample.0.weight", hf + "shortcut.convolution.weight"),
                  Rule(ours + "downsample.1.{bn}", hf + "shortcut.normalization.{bn}")]
        for n in (1, 2, 3):
            rules += [Rule(f"{ours}conv{n}.weight", f"{hf}layer.{n - 1}.convolution.weight"),
                      Rule(f"{ours}bn{n}.{{bn}}", f"{hf}layer.{n - 1}.normalization.{{bn}}")]
    return rules


# The learned position encoding (--position_embedding learned): one embedding per row and column.
_LEARNED_POSITIONS = [
    Rule("backbone.1.row_embed.weight", "model.position_embedding.row_embeddings.weight"),
    Rule("backbone.1.col_embed.weight", "model.position_embedding.column_embeddings.weight"),
]
# transformers >= 5 module names -> the names it saves.
_RUNTIME = ((r"^model\.backbone\.model\.", _HF_BODY),)
_JOINERS = {naming: NameMap(tuple(rules + _LEARNED_POSITIONS), _RUNTIME)
            for naming, rules in (("timm", _timm_rules()), ("resnet", _resnet_rules()))}


def joiner_names(naming: str) -> NameMap:
    """The names of our ``backbone`` (ResNet and position encoding) with the ResNet named ``naming``."""
    return _JOINERS[naming]


def naming_of(names) -> str:
    """Which naming a checkpoint's tensor names (saved or in-memory) use: transformers' ResNet has a stem
    ``embedder.embedder``, timm's ``conv1``."""
    return "resnet" if any(".embedder.embedder." in name for name in names) else "timm"


def _timm_name(reader: ConfigReader, field: str, name) -> str:
    """timm's model name without its hub prefix or pretrained tag: 'timm/resnet50.a1_in1k' -> 'resnet50'."""
    base = str(name).split("/")[-1].split(".")[0]
    if base not in RESNETS:
        raise reader.refuse(field, f"only timm's torchvision-style ResNets ({', '.join(RESNETS)}) match our "
                                   "backbones", value=name)
    return base


def _read(reader: ConfigReader, default_stages: list[int]) -> tuple[str, bool, list[int], str]:
    """(our --backbone, dilation, stages given to the detector, the field that lists them)."""
    backbone_config = reader.config.get("backbone_config")
    if backbone_config is None:
        if not reader.get("use_timm_backbone", True):
            # transformers' default when neither is given: its ResNet-50 with stage4 only.
            backbone_config = {"model_type": "resnet", "out_features": ["stage4"]}
        else:
            name = _timm_name(reader, "backbone", reader.get("backbone", "resnet50"))
            stages = reader.get("backbone_kwargs", {}).get("out_indices", default_stages)
            return name, bool(reader.get("dilation", False)), list(stages), "backbone_kwargs"
    if not isinstance(backbone_config, dict):
        raise reader.refuse("backbone_config", "expected an object")
    kind = backbone_config.get("model_type")
    if kind == "timm_backbone":
        name = _timm_name(reader, "backbone_config.backbone", backbone_config.get("backbone"))
        stride = backbone_config.get("output_stride")
        if stride not in (None, 32, 16):
            raise reader.refuse("backbone_config.output_stride", "our backbone has stride 32, or 16 with "
                                                                 "--dilation", value=stride)
        dilation = stride == 16 or (stride is None and bool(reader.get("dilation", False)))
        stages = backbone_config.get("out_indices") or default_stages
        return name, dilation, list(stages), "backbone_config.out_indices"
    if kind != "resnet":
        raise reader.refuse("backbone_config.model_type", "only a ResNet (transformers' 'resnet' or "
                                                          "timm's 'timm_backbone') matches our backbones")
    layer_type = backbone_config.get("layer_type", "bottleneck")
    depths = list(backbone_config.get("depths", [3, 4, 6, 3]))
    names = [n for n, arch in RESNETS.items() if arch == (layer_type, depths)]
    if not names:
        raise reader.refuse("backbone_config.depths", f"with layer_type {layer_type!r} no torchvision "
                                                      f"ResNet has these blocks ({', '.join(RESNETS)} do)",
                            value=depths)
    expected = {"hidden_sizes": _HIDDEN_SIZES[layer_type], "embedding_size": 64, "hidden_act": "relu",
                "downsample_in_first_stage": False, "downsample_in_bottleneck": False, "num_channels": 3}
    for key, want in expected.items():
        if key in backbone_config and backbone_config[key] != want:
            raise reader.refuse(f"backbone_config.{key}", f"our torchvision {names[0]} has "
                                                          f"{json.dumps(want)}", value=backbone_config[key])
    if reader.get("dilation", False):
        raise reader.refuse("dilation", "transformers' own ResNet has no dilation (DC5); only its timm "
                                        "backbone does")
    if backbone_config.get("out_indices"):
        stages = list(backbone_config["out_indices"])
    else:
        features = backbone_config.get("out_features") or ["stage4"]
        stages = [_STAGES.index(f) for f in features if f in _STAGES]
    return names[0], False, stages, "backbone_config.out_indices"


def read_backbone(reader: ConfigReader, stages: list[int], all_stages_read: bool) -> dict:
    """Our --backbone and --dilation from config.json, whose backbone must give the detector the ResNet
    ``stages`` (the last of those it lists, unless ``all_stages_read``)."""
    name, dilation, given, field = _read(reader, stages)
    read = given if all_stages_read else given[-len(stages):]
    if read != stages:
        raise reader.refuse(field, f"our model reads the ResNet's stages {stages} here", value=given)
    return {"backbone": name, "dilation": dilation}


def backbone_fields(args: argparse.Namespace, naming: str, stages: list[int]) -> dict:
    """config.json's backbone fields for our --backbone and --dilation, giving the detector ``stages``."""
    if naming not in BACKBONE_NAMINGS:
        raise ValueError(f"naming must be one of {BACKBONE_NAMINGS}, got {naming!r}")
    if args.backbone not in RESNETS:
        raise HFCheckpointError(f"--backbone {args.backbone}: no transformers counterpart")
    # Both forms load in transformers 4 and 5: 5 reads the older top-level timm fields, and 4 refuses a
    # backbone_config beside its defaults use_timm_backbone=True, backbone='resnet50'. Both derive the
    # timm stages from the model type (and dilation); given backbone_kwargs, 5 looks the name up on the hub.
    if naming == "timm":
        return {"use_timm_backbone": True, "backbone": args.backbone, "backbone_config": None,
                "backbone_kwargs": None, "dilation": bool(args.dilation)}
    if args.dilation:
        raise HFCheckpointError("--dilation: transformers' own ResNet has no dilation; write the timm naming "
                                "(--naming timm)")
    layer_type, depths = RESNETS[args.backbone]
    backbone_config = {"model_type": "resnet", "num_channels": 3, "embedding_size": 64,
                       "hidden_sizes": _HIDDEN_SIZES[layer_type], "depths": depths, "layer_type": layer_type,
                       "hidden_act": "relu", "downsample_in_first_stage": False,
                       "downsample_in_bottleneck": False, "out_indices": stages,
                       "out_features": [_STAGES[i] for i in stages]}
    return {"use_timm_backbone": False, "backbone": None, "backbone_config": backbone_config,
            "backbone_kwargs": None, "dilation": False}
