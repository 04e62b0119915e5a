"""Hugging Face (transformers) Deformable DETR checkpoints: read them as ours, write ours as them.

A transformers checkpoint folder holds ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``). Both are read as data: JSON, safetensors
and ``torch.load(weights_only=True)``; no code from the folder or from transformers runs, and
transformers need not be installed.

Names on the way in: transformers' saved (hub) names (``model.backbone.conv_encoder.model.*``,
``layers.N.fc1``, ``self_attn.out_proj``) and those of its in-memory modules since 5.0
(``model.backbone.model.*``, ``layers.N.mlp.fc1``, ``self_attn.o_proj``); the backbone either
timm-named (``conv1``, ``layer1.0.bn2``: torchvision's names) or transformers' own ResNet
(``embedder.embedder.convolution``, ``encoder.stages.0.layers.0.layer.1``). On the way out: the saved
names, which is what ``save_pretrained`` writes, one name per tied tensor as it does (but every class
head of a +refine model: see ``ours_to_hf``), with a ``config.json`` that transformers 4 and 5 read.

Whatever our model cannot represent (another backbone, a class count our ``--dataset_file`` values do
not give, unequal encoder/decoder widths, ...) is refused with an ``HFCheckpointError`` naming the
config field, and every tensor of the file must land in the model and every tensor of the model must
come from the file: there is no partial load.
"""

import argparse
import json
import os
import re
from collections.abc import Callable

import torch
from torch import Tensor

from util.checkpoint import CheckpointError
from util.hf_folder import BIN_FILE, CONFIG_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX, is_hf_folder

__all__ = [
    "HFCheckpointError", "is_hf_folder", "read_hf_folder", "args_from_hf_config", "hf_to_ours",
    "load_hf_checkpoint", "hf_config_from_args", "ours_to_hf", "save_hf_folder", "BACKBONE_NAMINGS",
]

# "resnet": transformers' own ResNet (loads without timm); "timm": timm's resnet, as the published
# SenseTime checkpoints are (from_pretrained then needs timm installed).
BACKBONE_NAMINGS = ("resnet", "timm")

# Our torchvision ResNets: (block type, blocks per stage); hidden sizes and stem are the standard ones.
_RESNETS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
}
_HIDDEN_SIZES = {"basic": [64, 128, 256, 512], "bottleneck": [256, 512, 1024, 2048]}
_STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]
# What the model builds from --dataset_file: the classifier width (util.args has no --num_classes).
_DATASET_FOR_CLASSES = {91: "coco", 250: "coco_panoptic"}


class HFCheckpointError(CheckpointError):
    """A Hugging Face folder that is unreadable, or describes a model ours cannot represent."""


def _read_safetensors(path: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for a bad header or a short file
        raise HFCheckpointError(f"cannot read {path}: {e}") from e


def read_hf_folder(folder: str) -> tuple[dict, dict[str, Tensor]]:
    """(config dict, state dict) of a transformers checkpoint folder, read without running its code."""
    config_path = os.path.join(folder, CONFIG_FILE)
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as e:
        raise HFCheckpointError(f"cannot read {config_path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise HFCheckpointError(f"{config_path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise HFCheckpointError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    if os.path.isfile(os.path.join(folder, SAFETENSORS_FILE)):
        return config, _read_safetensors(os.path.join(folder, SAFETENSORS_FILE))
    index_path = os.path.join(folder, SAFETENSORS_INDEX)
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise HFCheckpointError(f"{index_path}: expected a JSON object with a 'weight_map' ({e})") from e
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(_read_safetensors(os.path.join(folder, shard)))
        return config, state
    bin_path = os.path.join(folder, BIN_FILE)
    if not os.path.isfile(bin_path):
        raise HFCheckpointError(f"{folder}: no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {BIN_FILE} beside "
                                f"{CONFIG_FILE}")
    from util.checkpoint import load_checkpoint

    state = load_checkpoint(bin_path)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise HFCheckpointError(f"{bin_path}: expected a state dict (names to tensors)")
    return config, state


# --- config.json -> our flags -------------------------------------------------------------------------

def _field(config: dict, name: str, default=None):
    value = config.get(name, default)
    return default if value is None else value


def _refuse(field: str, value, why: str) -> HFCheckpointError:
    return HFCheckpointError(f"config.json: {field} = {json.dumps(value)}: {why}")


def _timm_backbone_name(field: str, name: str) -> str:
    """timm's model name without its hub prefix or pretrained tag: 'timm/resnet50.a1_in1k' -> 'resnet50'."""
    base = str(name).split("/")[-1].split(".")[0]
    if base not in _RESNETS:
        raise _refuse(field, name, f"only timm's torchvision-style ResNets ({', '.join(_RESNETS)}) match "
                                   "our backbones")
    return base


def _backbone_from_config(config: dict) -> tuple[str, str, bool, list[int]]:
    """(our --backbone, naming, dilation, backbone stages fed to the transformer) from config.json.

    Reads transformers 5's ``backbone_config`` (``model_type`` timm_backbone or resnet) and the earlier
    form (``use_timm_backbone``, ``backbone``, ``backbone_kwargs``, ``dilation`` at the top level).
    """
    multi = int(_field(config, "num_feature_levels", 4)) > 1
    backbone_config = config.get("backbone_config")
    if backbone_config is None:
        if not _field(config, "use_timm_backbone", True):
            # transformers' default when neither is given: its ResNet-50 with stage4 only.
            backbone_config = {"model_type": "resnet", "out_features": ["stage4"]}
        else:
            name = _timm_backbone_name("backbone", _field(config, "backbone", "resnet50"))
            kwargs = _field(config, "backbone_kwargs", {})
            out_indices = list(kwargs.get("out_indices", [2, 3, 4] if multi else [4]))
            return name, "timm", bool(_field(config, "dilation", False)), out_indices
    if not isinstance(backbone_config, dict):
        raise _refuse("backbone_config", backbone_config, "expected an object")
    kind = backbone_config.get("model_type")
    if kind == "timm_backbone":
        name = _timm_backbone_name("backbone_config.backbone", backbone_config.get("backbone"))
        stride = backbone_config.get("output_stride")
        if stride not in (None, 32, 16):
            raise _refuse("backbone_config.output_stride", stride, "our backbone has stride 32, or 16 with "
                                                                   "--dilation")
        dilation = stride == 16 or (stride is None and bool(_field(config, "dilation", False)))
        out_indices = backbone_config.get("out_indices") or ([2, 3, 4] if multi else [4])
        return name, "timm", dilation, list(out_indices)
    if kind != "resnet":
        raise _refuse("backbone_config.model_type", kind, "only a ResNet (transformers' 'resnet' or timm's "
                                                          "'timm_backbone') matches our backbones")
    layer_type = backbone_config.get("layer_type", "bottleneck")
    depths = list(backbone_config.get("depths", [3, 4, 6, 3]))
    names = [n for n, arch in _RESNETS.items() if arch == (layer_type, depths)]
    if not names:
        raise _refuse("backbone_config.depths", depths, f"with layer_type {layer_type!r} no torchvision "
                                                        f"ResNet has these blocks ({', '.join(_RESNETS)} do)")
    expected = {"hidden_sizes": _HIDDEN_SIZES[layer_type], "embedding_size": 64, "hidden_act": "relu",
                "downsample_in_first_stage": False, "downsample_in_bottleneck": False, "num_channels": 3}
    for key, want in expected.items():
        if key in backbone_config and backbone_config[key] != want:
            raise _refuse(f"backbone_config.{key}", backbone_config[key],
                          f"our torchvision {names[0]} has {json.dumps(want)}")
    if _field(config, "dilation", False):
        raise _refuse("dilation", True, "transformers' own ResNet has no dilation (DC5); only its timm "
                                        "backbone does")
    if backbone_config.get("out_indices"):
        out_indices = list(backbone_config["out_indices"])
    else:
        features = backbone_config.get("out_features") or ["stage4"]
        out_indices = [_STAGES.index(f) for f in features if f in _STAGES]
    return names[0], "resnet", False, out_indices


def args_from_hf_config(config: dict) -> argparse.Namespace:
    """Our main.py flags (defaults elsewhere) that build the architecture ``config`` describes."""
    from util.args import get_args_parser

    if config.get("model_type", "deformable_detr") != "deformable_detr":
        raise _refuse("model_type", config.get("model_type"), "expected 'deformable_detr'")
    pairs = [("encoder_attention_heads", "decoder_attention_heads", "nheads", 8),
             ("encoder_ffn_dim", "decoder_ffn_dim", "dim_feedforward", 1024)]
    for enc, dec, flag, default in pairs:
        if _field(config, enc, default) != _field(config, dec, default):
            raise _refuse(dec, config.get(dec), f"differs from {enc} = {config.get(enc)}: our model has one "
                                                f"--{flag} for both")
    if _field(config, "activation_function", "relu") != "relu":
        raise _refuse("activation_function", config["activation_function"], "our layers use ReLU")
    if _field(config, "position_embedding_type", "sine") != "sine":
        raise _refuse("position_embedding_type", config["position_embedding_type"],
                      "only the sine position encoding is mapped (transformers' learned one is not)")
    if _field(config, "num_channels", 3) != 3:
        raise _refuse("num_channels", config["num_channels"], "our backbone takes RGB images")
    levels = int(_field(config, "num_feature_levels", 4))
    backbone, _, dilation, out_indices = _backbone_from_config(config)
    want = [2, 3, 4] if levels > 1 else [4]
    field = "backbone_config.out_indices" if config.get("backbone_config") is not None else "backbone_kwargs"
    if out_indices != want:
        raise _refuse(field, out_indices, f"with num_feature_levels {levels} our backbone feeds stages "
                                          f"{want}")
    if levels == 2:
        raise _refuse("num_feature_levels", levels, "our multi-scale model takes three backbone levels, so 1 "
                                                    "or at least 3")
    labels = config.get("id2label")
    num_classes = len(labels) if isinstance(labels, dict) else int(_field(config, "num_labels", 2))
    if num_classes not in _DATASET_FOR_CLASSES:
        raise _refuse("id2label", f"{num_classes} labels",
                      "our classifier width follows --dataset_file (91 classes for coco, 250 for "
                      "coco_panoptic) and there is no --num_classes flag")
    two_stage = bool(_field(config, "two_stage", False))
    num_queries = int(_field(config, "two_stage_num_proposals", 300) if two_stage
                      else _field(config, "num_queries", 300))
    args = get_args_parser().parse_args([])
    values = {
        "backbone": backbone, "dilation": dilation, "position_embedding": "sine",
        "num_feature_levels": levels, "hidden_dim": int(_field(config, "d_model", 256)),
        "nheads": int(_field(config, "encoder_attention_heads", 8)),
        "enc_layers": int(_field(config, "encoder_layers", 6)),
        "dec_layers": int(_field(config, "decoder_layers", 6)),
        "dim_feedforward": int(_field(config, "encoder_ffn_dim", 1024)),
        "enc_n_points": int(_field(config, "encoder_n_points", 4)),
        "dec_n_points": int(_field(config, "decoder_n_points", 4)),
        "num_queries": num_queries, "with_box_refine": bool(_field(config, "with_box_refine", False)),
        "two_stage": two_stage, "dropout": float(_field(config, "dropout", 0.1)),
        "dataset_file": _DATASET_FOR_CLASSES[num_classes], "masks": False,
        "focal_alpha": float(_field(config, "focal_alpha", 0.25)),
        # Every weight, the backbone's included, comes from the checkpoint.
        "no_pretrained_backbone": True,
    }
    for flag, value in values.items():
        setattr(args, flag, value)
    return args


# --- tensor names ---------------------------------------------------------------------------------------

# transformers >= 5 module names -> the names it saves (and hub files hold).
_RUNTIME_TO_SAVED = [
    (re.compile(r"^model\.backbone\.model\."), "model.backbone.conv_encoder.model."),
    (re.compile(r"(layers\.\d+)\.mlp\.fc([12])\."), r"\1.fc\2."),
    (re.compile(r"\.self_attn\.o_proj\."), ".self_attn.out_proj."),
]
_HF_BACKBONE = "model.backbone.conv_encoder.model."
_ENCODER_LAYER = {"norm1": "self_attn_layer_norm", "linear1": "fc1", "linear2": "fc2",
                  "norm2": "final_layer_norm"}
_DECODER_LAYER = {"cross_attn": "encoder_attn", "norm1": "encoder_attn_layer_norm",
                  "norm2": "self_attn_layer_norm", "linear1": "fc1", "linear2": "fc2",
                  "norm3": "final_layer_norm"}
_QKV = ("q_proj", "k_proj", "v_proj")
# transformers' tie map: class_embed.N and bbox_embed.N (N > 0) are class_embed.0 and bbox_embed.0.
_HEAD_N = re.compile(r"^(class_embed|bbox_embed)\.[1-9]\d*\.")


def _saved_name(key: str) -> str:
    for pattern, replacement in _RUNTIME_TO_SAVED:
        key = pattern.sub(replacement, key)
    return key


def _resnet_name(body_key: str) -> str:
    """torchvision ResNet name -> transformers ResNet name: 'layer2.0.downsample.1.weight' ->
    'encoder.stages.1.layers.0.shortcut.normalization.weight'."""
    stem = re.fullmatch(r"(conv1|bn1)\.(\w+)", body_key)
    if stem:
        part = "convolution" if stem.group(1) == "conv1" else "normalization"
        return f"embedder.embedder.{part}.{stem.group(2)}"
    block = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)\.(\w+)", body_key)
    if not block:
        raise HFCheckpointError(f"no transformers ResNet name for backbone tensor {body_key!r}")
    stage, index, kind, number, leaf = block.groups()
    prefix = f"encoder.stages.{int(stage) - 1}.layers.{index}"
    if kind == "downsample.":
        part = "convolution" if number == "0" else "normalization"
        return f"{prefix}.shortcut.{part}.{leaf}"
    part = "convolution" if kind == "conv" else "normalization"
    return f"{prefix}.layer.{int(number) - 1}.{part}.{leaf}"


def _hf_names(key: str, naming: str) -> list[str]:
    """The saved transformers name(s) of our state-dict entry ``key``; three (q, k, v) for the decoder's
    packed self-attention input projection, stacked in that order along dim 0."""
    if key.startswith("backbone.0.body."):
        body = key[len("backbone.0.body."):]
        return [_HF_BACKBONE + (body if naming == "timm" else _resnet_name(body))]
    layer = re.fullmatch(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(.+)", key)
    if layer:
        side, index, module, rest = layer.groups()
        prefix = f"model.{side}.layers.{index}"
        if side == "decoder" and module == "self_attn" and rest.startswith("in_proj_"):
            leaf = rest[len("in_proj_"):]
            return [f"{prefix}.self_attn.{proj}.{leaf}" for proj in _QKV]
        renames = _ENCODER_LAYER if side == "encoder" else _DECODER_LAYER
        return [f"{prefix}.{renames.get(module, module)}.{rest}"]
    if key == "query_embed.weight":
        return ["model.query_position_embeddings.weight"]
    if key.startswith("transformer."):
        return ["model." + key[len("transformer."):]]
    if key.startswith("input_proj."):
        return ["model." + key]
    if key.startswith(("class_embed.", "bbox_embed.")):
        return [key]
    raise HFCheckpointError(f"no transformers name for tensor {key!r}")


def _expected_layout(args: argparse.Namespace) -> tuple[dict[str, tuple[int, ...]], list[list[str]]]:
    """Our state dict for ``args`` without weights: key -> shape, and the groups of keys that are one
    tensor (a shared head under several names), in state-dict order."""
    from models import build_model

    try:
        with torch.device("meta"):
            model = build_model(argparse.Namespace(**vars(args)))[0]
    except ValueError as e:
        raise HFCheckpointError(f"config.json describes a model ours cannot build: {e}") from e
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    groups: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False),
                         *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(tensor), []).append(name)
    ordered = sorted(groups.values(), key=lambda g: list(shapes).index(g[0]))
    return shapes, ordered


def _naming_of(hf_state: dict[str, Tensor]) -> str:
    return "resnet" if any(k.startswith(_HF_BACKBONE + "embedder.") for k in hf_state) else "timm"


def hf_to_ours(hf_state: dict[str, Tensor], args: argparse.Namespace) -> dict[str, Tensor]:
    """Our state dict (every name of a shared tensor filled) from transformers' ``hf_state``.

    Raises HFCheckpointError naming the tensor when one the model needs is absent, one in the file has
    no place in the model, or a shape differs.
    """
    state = {_saved_name(k): v for k, v in hf_state.items()}
    naming = _naming_of(state)
    shapes, groups = _expected_layout(args)
    ours: dict[str, Tensor] = {}
    used: set[str] = set()
    for group in groups:
        sources = [(key, _hf_names(key, naming)) for key in group]
        for _, names in sources:
            used.update(names)
        present = [(key, names) for key, names in sources if all(n in state for n in names)]
        if not present:
            # transformers ties head N to head 0 and then saves head 0 only (a +refine model's class heads).
            tied = [(key, [_HEAD_N.sub(r"\1.0.", n) for n in names]) for key, names in sources]
            present = [(key, names) for key, names in tied if all(n in state for n in names)]
        if not present:
            raise HFCheckpointError(f"the Hugging Face checkpoint lacks {' + '.join(sources[0][1])} "
                                    f"(our {group[0]}): the config describes a model with it")
        key, names = present[0]
        tensor = torch.cat([state[n] for n in names]) if len(names) > 1 else state[names[0]]
        if tuple(tensor.shape) != shapes[key]:
            raise HFCheckpointError(f"the Hugging Face tensor {names[0]} has shape {tuple(tensor.shape)}, "
                                    f"the model its config.json describes needs {shapes[key]} (our {key})")
        for member in group:
            ours[member] = tensor
    unused = sorted(set(state) - used)
    if unused:
        listed = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise HFCheckpointError(f"the Hugging Face checkpoint has {len(unused)} tensors the model its "
                                f"config.json describes has no place for: {listed}")
    return ours


def load_hf_checkpoint(folder: str) -> dict:
    """``{'model': state dict, 'args': Namespace}``, as our checkpoints are, from a transformers folder."""
    config, hf_state = read_hf_folder(folder)
    try:
        args = args_from_hf_config(config)
        return {"model": hf_to_ours(hf_state, args), "args": args}
    except HFCheckpointError as e:
        raise HFCheckpointError(f"{folder}: {e}") from e


# --- our checkpoint -> transformers ----------------------------------------------------------------------

def _saved_by_transformers(group_names: list[list[str]]) -> list[str]:
    """Of one tensor's transformers names, the one ``save_pretrained`` keeps: the tie's source, i.e. the
    decoder's copy (``model.decoder.*``) over the detector's, then the lowest layer index."""
    def rank(names: list[str]) -> tuple:
        indices = [int(n) for n in re.findall(r"\.(\d+)\.", names[0])]
        return (not names[0].startswith("model.decoder."), indices)

    return min(group_names, key=rank)


def hf_config_from_args(args: argparse.Namespace, naming: str = "resnet") -> dict:
    """transformers' ``config.json`` (as ``DeformableDetrConfig.to_dict`` would hold it) for ``args``."""
    if naming not in BACKBONE_NAMINGS:
        raise ValueError(f"naming must be one of {BACKBONE_NAMINGS}, got {naming!r}")
    if getattr(args, "masks", False):
        raise HFCheckpointError("--masks: transformers' Deformable DETR has no mask head")
    if getattr(args, "bf", 0) and getattr(args, "eval_bf", 0):
        raise HFCheckpointError("--eval_bf: transformers' Deformable DETR has no BatchFormerV2 at inference")
    if args.position_embedding != "sine":
        raise HFCheckpointError("--position_embedding learned: only the sine encoding is mapped")
    if args.backbone not in _RESNETS:
        raise HFCheckpointError(f"--backbone {args.backbone}: no transformers counterpart")
    multi = args.num_feature_levels > 1
    out_indices = [2, 3, 4] if multi else [4]
    # Both forms load in transformers 4 and 5: 5 reads the older top-level timm fields, and 4 refuses a
    # backbone_config beside its defaults use_timm_backbone=True, backbone='resnet50'. Both derive the
    # timm stages from num_feature_levels and dilation; given backbone_kwargs, 5 looks the name up
    # on the hub.
    if naming == "timm":
        backbone = {"use_timm_backbone": True, "backbone": args.backbone, "backbone_config": None,
                    "backbone_kwargs": None}
    else:
        if args.dilation:
            raise HFCheckpointError("--dilation: transformers' own ResNet has no dilation; write the timm "
                                    "naming (--naming timm)")
        layer_type, depths = _RESNETS[args.backbone]
        backbone_config = {"model_type": "resnet", "num_channels": 3, "embedding_size": 64,
                           "hidden_sizes": _HIDDEN_SIZES[layer_type], "depths": depths,
                           "layer_type": layer_type, "hidden_act": "relu", "downsample_in_first_stage": False,
                           "downsample_in_bottleneck": False, "out_indices": out_indices,
                           "out_features": [_STAGES[i] for i in out_indices]}
        backbone = {"use_timm_backbone": False, "backbone": None, "backbone_config": backbone_config,
                    "backbone_kwargs": None}
    from models.deformable_detr import num_classes_for

    num_classes = num_classes_for(args)
    return {
        "architectures": ["DeformableDetrForObjectDetection"], "model_type": "deformable_detr",
        **backbone, "use_pretrained_backbone": False, "dilation": bool(args.dilation), "num_channels": 3,
        "d_model": args.hidden_dim, "encoder_layers": args.enc_layers, "decoder_layers": args.dec_layers,
        "encoder_attention_heads": args.nheads, "decoder_attention_heads": args.nheads,
        "encoder_ffn_dim": args.dim_feedforward, "decoder_ffn_dim": args.dim_feedforward,
        "encoder_n_points": args.enc_n_points, "decoder_n_points": args.dec_n_points,
        "num_feature_levels": args.num_feature_levels, "num_queries": args.num_queries,
        "two_stage_num_proposals": args.num_queries, "with_box_refine": bool(args.with_box_refine),
        "two_stage": bool(args.two_stage), "position_embedding_type": "sine", "activation_function": "relu",
        "dropout": float(args.dropout), "auxiliary_loss": bool(getattr(args, "aux_loss", True)),
        "focal_alpha": float(args.focal_alpha), "class_cost": args.set_cost_class,
        "bbox_cost": args.set_cost_bbox, "giou_cost": args.set_cost_giou,
        "bbox_loss_coefficient": args.bbox_loss_coef, "giou_loss_coefficient": args.giou_loss_coef,
        "id2label": {str(i): f"LABEL_{i}" for i in range(num_classes)},
        "label2id": {f"LABEL_{i}": i for i in range(num_classes)},
    }


def ours_to_hf(state: dict[str, Tensor], args: argparse.Namespace,
               naming: str = "resnet") -> dict[str, Tensor]:
    """transformers' saved state dict from ours: the tensors ``save_pretrained`` writes, named as it does,
    except that a +refine model's class heads are all written.

    transformers 5 ties a +refine model's class heads to the first (one head for every decoder layer) and
    saves that one; transformers 4 and the published +refine models have one per layer, and 4 needs
    them all in the file. Given them, 5 ties them when equal and keeps them apart (with a warning)
    when they differ.

    BatchFormerV2 weights are left out (transformers' model has none; inference does not use them).
    """
    shapes, groups = _expected_layout(args)
    missing = [k for k in shapes if k not in state and "bf" not in k.split(".")]
    if missing:
        raise HFCheckpointError(f"the checkpoint lacks {len(missing)} tensors of the model its args describe "
                                f"({', '.join(missing[:5])})")
    out: dict[str, Tensor] = {}
    for group in groups:
        if "bf" in group[0].split("."):
            continue
        names_of = {tuple(_hf_names(k, naming)): k for k in group}
        names = _saved_by_transformers([list(n) for n in names_of])
        tensor = state[names_of[tuple(names)]]
        pieces = tensor.chunk(len(names)) if len(names) > 1 else [tensor]
        for name, piece in zip(names, pieces):
            out[name] = piece.clone()  # safetensors refuses two names on one storage (equal heads)
    return out


def save_hf_folder(checkpoint: dict, folder: str, naming: str = "resnet",
                   progress: Callable[[str], None] | None = None) -> None:
    """Write ``checkpoint`` ({model, args}) as a folder ``DeformableDetrForObjectDetection.from_pretrained``
    loads: ``config.json`` and ``model.safetensors``."""
    from safetensors.torch import save_file

    args = checkpoint.get("args")
    if isinstance(args, dict):
        args = argparse.Namespace(**args)
    if args is None:
        raise HFCheckpointError("the checkpoint records no args: its architecture is unknown")
    from util.args import get_args_parser

    full = get_args_parser().parse_args([])
    for flag, value in vars(args).items():
        setattr(full, flag, value)
    full.no_pretrained_backbone = True
    config = hf_config_from_args(full, naming)
    tensors = ours_to_hf(checkpoint["model"], full, naming)
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, SAFETENSORS_FILE), metadata={"format": "pt"})
    with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    if progress is not None:
        progress(f"wrote {len(tensors)} tensors and {CONFIG_FILE} to {folder}")
