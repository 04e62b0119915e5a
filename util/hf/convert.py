"""Converting between transformers' checkpoints and ours, for every model type of ``MODEL_TYPES``.

    checkpoint = load_hf_checkpoint(folder)           # {"model": our state dict, "args": our flags}
    save_hf_folder(checkpoint, folder)                # config.json + model.safetensors for from_pretrained

Names on the way in: transformers' saved (hub) names and those of its in-memory modules since 5.0
(``model.state_dict()``), the backbone named as timm's or transformers' own ResNet. On the way out: the
saved names, which is what ``save_pretrained`` writes, one name per tied tensor as it does.

Whatever our model cannot represent (another backbone, unequal encoder/decoder widths, pre-norm, ...)
is refused with an ``HFCheckpointError`` naming the config field, and so is what transformers cannot
(BatchFormerV2 at inference, a Deformable DETR mask head, ...). Every tensor of the file must have a
place in our model and every piece of a tensor transformers splits must be there; for the detectors
``models`` builds (``HFModelType.built_by_models``), every tensor of our model must also come from the
file, with its shape: there is no partial load.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
from torch import Tensor

from util.args import with_defaults
from util.checkpoint import load_checkpoint
from util.hf.backbone import BACKBONE_NAMINGS, backbone_fields, joiner_names, naming_of, read_backbone
from util.hf.conditional_detr import CONDITIONAL_DETR
from util.hf.config import ConfigReader, Notes, read_shared, shared_fields
from util.hf.deformable_detr import DEFORMABLE_DETR
from util.hf.detr import DETR
from util.hf.folder import HFCheckpointError, is_hf_folder, read_hf_folder, write_hf_folder
from util.hf.spec import HFModelType, NameMap

__all__ = [
    "MODEL_TYPES", "BACKBONE_NAMINGS", "HFCheckpointError", "model_type_of", "args_from_hf_config",
    "hf_config_from_args", "hf_to_ours", "ours_to_hf", "load_hf_checkpoint", "save_hf_folder",
    "load_checkpoint_or_folder",
]

MODEL_TYPES: dict[str, HFModelType] = {t.model_type: t for t in (DEFORMABLE_DETR, DETR, CONDITIONAL_DETR)}
# Our checkpoints from before --meta_arch are all Deformable DETR.
_DEFAULT_META_ARCH = "deformable_detr"


def model_type_of(args: argparse.Namespace) -> HFModelType:
    """The transformers model type of our ``--meta_arch``."""
    meta_arch = getattr(args, "meta_arch", None) or _DEFAULT_META_ARCH
    for model_type in MODEL_TYPES.values():
        if model_type.meta_arch == meta_arch:
            return model_type
    raise HFCheckpointError(f"--meta_arch {meta_arch}: no transformers model type is mapped "
                            f"({', '.join(t.meta_arch for t in MODEL_TYPES.values())} are)")


def _model_type_of_config(config: dict) -> tuple[HFModelType, bool]:
    """(model type, whether it is the segmentation model) of a config.json."""
    name = config.get("model_type", _DEFAULT_META_ARCH)
    if name not in MODEL_TYPES:
        raise HFCheckpointError(f"config.json: model_type = {name!r}: expected one of "
                                f"{', '.join(MODEL_TYPES)}")
    model_type = MODEL_TYPES[name]
    architectures = config.get("architectures") or [model_type.detection]
    known = [a for a in (model_type.detection, model_type.segmentation) if a]
    if architectures[0] not in known:
        raise HFCheckpointError(f"config.json: architectures = {architectures}: expected "
                                f"{' or '.join(known)} (a model with its heads)")
    return model_type, architectures[0] == model_type.segmentation


def _name_maps(model_type: HFModelType, naming: str, masks: bool) -> list[NameMap]:
    joiner, detector = joiner_names(naming), model_type.detector
    whole = NameMap(joiner.rules + detector.rules, joiner.runtime + detector.runtime)
    if not masks:
        return [whole]
    # The segmentation model holds the detector under a prefix (ours: ``detr.``) beside the mask head.
    return [whole.prefixed("detr.", model_type.detector_prefix), model_type.mask_head]


def _hf_names(maps: list[NameMap], key: str) -> list[str]:
    for names in (m.hf_names(key) for m in maps):
        if names is not None:
            return names
    raise HFCheckpointError(f"no transformers name for tensor {key!r}")


def _is_batchformer(key: str) -> bool:
    return "bf" in key.split(".")


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# --- config.json -> our flags -------------------------------------------------------------------------

def args_from_hf_config(config: dict) -> argparse.Namespace:
    """Our main.py flags that build the architecture ``config`` describes (the others at our defaults for
    its detector)."""
    model_type, masks = _model_type_of_config(config)
    reader = ConfigReader(config, model_type.defaults)
    values = {**read_shared(reader), **model_type.read_config(reader), "masks": masks,
              "meta_arch": model_type.meta_arch}
    stages = model_type.backbone_stages(masks, values.get("num_feature_levels", 1))
    values.update(read_backbone(reader, stages, model_type.all_stages_read))
    return with_defaults(argparse.Namespace(**values))


def hf_config_from_args(args: argparse.Namespace, naming: str = "resnet", notes: Notes | None = None) -> dict:
    """transformers' ``config.json`` (as its config's ``to_dict`` would hold it) for ``args``; ``notes``
    collects what the config cannot hold."""
    args = with_defaults(args)
    model_type = model_type_of(args)
    if args.masks and model_type.segmentation is None:
        raise HFCheckpointError(f"--masks: transformers' {model_type.detection} has no mask head")
    if args.bf and args.eval_bf:
        raise HFCheckpointError("--eval_bf: transformers' models have no BatchFormerV2 at inference")
    notes = Notes() if notes is None else notes
    stages = model_type.backbone_stages(args.masks, args.num_feature_levels)
    return {
        "architectures": [model_type.segmentation if args.masks else model_type.detection],
        "model_type": model_type.model_type, **backbone_fields(args, naming, stages),
        **shared_fields(args, notes), **model_type.write_config(args, notes),
    }


# --- tensors ------------------------------------------------------------------------------------------

def _our_layout(args: argparse.Namespace) -> tuple[dict[str, tuple[int, ...]], list[list[str]]]:
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
    order = {k: n for n, k in enumerate(shapes)}
    return shapes, sorted(groups.values(), key=lambda g: order[g[0]])


def _tied(group: list[str], saved: dict[str, Tensor], model_type: HFModelType, maps: list[NameMap]):
    """The tensor of ``group`` from the names transformers 5 ties its names to, or None."""
    for key in group:
        sources = [model_type.tie_source(name) for name in _hf_names(maps, key)]
        if all(source in saved for source in sources):
            return torch.cat([saved[s] for s in sources]) if len(sources) > 1 else saved[sources[0]]
    return None


def _fit_our_model(ours: dict[str, Tensor], saved: dict[str, Tensor], args: argparse.Namespace,
                   model_type: HFModelType, maps: list[NameMap]) -> dict[str, Tensor]:
    """``ours`` with every name of a shared tensor filled, checked against our model for ``args``; the
    BatchFormerV2 weights, which transformers' models have none of, stay missing (as ``ours_to_hf`` leaves
    them out)."""
    shapes, groups = _our_layout(args)
    fitted: dict[str, Tensor] = {}
    for group in groups:
        if _is_batchformer(group[0]):
            continue
        present = [key for key in group if key in ours]
        tensor = ours[present[0]] if present else _tied(group, saved, model_type, maps)
        if tensor is None:
            raise HFCheckpointError(f"the Hugging Face checkpoint lacks "
                                    f"{' + '.join(_hf_names(maps, group[0]))} (our {group[0]}): the config "
                                    "describes a model with it")
        for key in present[1:]:
            if not torch.equal(ours[key], tensor):
                raise HFCheckpointError(f"the Hugging Face tensors {_hf_names(maps, present[0])[0]} and "
                                        f"{_hf_names(maps, key)[0]} differ; our model has one tensor for "
                                        "both")
        if tuple(tensor.shape) != shapes[group[0]]:
            raise HFCheckpointError(f"the Hugging Face tensor {_hf_names(maps, group[0])[0]} has shape "
                                    f"{tuple(tensor.shape)}, the model its config.json describes needs "
                                    f"{shapes[group[0]]} (our {group[0]})")
        fitted.update(dict.fromkeys(group, tensor))
    extra = sorted(set(ours) - set(fitted))
    if extra:
        names = [_hf_names(maps, key)[0] for key in extra]
        raise HFCheckpointError(f"the Hugging Face checkpoint has {len(names)} tensors the model its "
                                f"config.json describes has no place for: {_listing(names)}")
    return fitted


def hf_to_ours(hf_state: dict[str, Tensor], args: argparse.Namespace) -> dict[str, Tensor]:
    """Our state dict (every name of a shared tensor filled) from transformers' ``hf_state``, for the model
    ``args`` describe (``args_from_hf_config``).

    Raises HFCheckpointError naming the tensor when one in the file has no place in the model, a piece
    of a tensor transformers splits is missing, or (models that ``models`` builds) one the model needs
    is absent or a shape differs.
    """
    args = with_defaults(args)
    model_type = model_type_of(args)
    maps = _name_maps(model_type, naming_of(hf_state), args.masks)
    pieces: dict[str, dict[int, Tensor]] = {}
    counts: dict[str, int] = {}
    saved: dict[str, Tensor] = {}
    unplaced = []
    for name, tensor in hf_state.items():
        for m in maps:  # each renames only the names under its prefix
            name = m.saved_name(name)
        saved[name] = tensor
        found = next((hit for hit in (m.our_name(name) for m in maps) if hit is not None), None)
        if found is None:
            unplaced.append(name)
            continue
        key, piece, count = found
        pieces.setdefault(key, {})[piece] = tensor
        counts[key] = count
    if unplaced:
        raise HFCheckpointError(f"the Hugging Face checkpoint has {len(unplaced)} tensors the model its "
                                f"config.json describes has no place for: {_listing(sorted(unplaced))}")
    ours = {}
    for key, found in pieces.items():
        if len(found) < counts[key]:
            lacking = [n for i, n in enumerate(_hf_names(maps, key)) if i not in found]
            raise HFCheckpointError(f"the Hugging Face checkpoint lacks {', '.join(lacking)} (part of our "
                                    f"{key})")
        ours[key] = torch.cat([found[i] for i in range(counts[key])]) if counts[key] > 1 else found[0]
    return _fit_our_model(ours, saved, args, model_type, maps) if model_type.built_by_models else ours


def ours_to_hf(state: dict[str, Tensor], args: argparse.Namespace, naming: str = "resnet",
               untied: bool = False) -> dict[str, Tensor]:
    """transformers' saved state dict from ours: the tensors ``save_pretrained`` writes, named as it does
    (every name of a shared tensor when ``untied``: a config with ``tie_word_embeddings`` false), except
    that a +refine Deformable DETR's class heads are all written (``util.hf.deformable_detr``).

    BatchFormerV2 weights are left out (transformers' models have none; inference does not use them).
    """
    if naming not in BACKBONE_NAMINGS:
        raise ValueError(f"naming must be one of {BACKBONE_NAMINGS}, got {naming!r}")
    args = with_defaults(args)
    model_type = model_type_of(args)
    maps = _name_maps(model_type, naming, args.masks)
    groups = _our_layout(args)[1] if model_type.built_by_models else [[key] for key in state]
    out: dict[str, Tensor] = {}
    missing = []
    for group in groups:
        if _is_batchformer(group[0]):
            continue
        source = next((key for key in group if key in state), None)
        if source is None:
            missing.append(group[0])
            continue
        candidates = [_hf_names(maps, key) for key in group]
        for names in candidates if untied else [model_type.saved_choice(candidates)]:
            tensor = state[source]
            for name, piece in zip(names, tensor.chunk(len(names)) if len(names) > 1 else [tensor]):
                out[name] = piece.clone()  # safetensors refuses two names on one storage
    if missing:
        raise HFCheckpointError(f"the checkpoint lacks {len(missing)} tensors of the model its args describe "
                                f"({_listing(missing)})")
    return out


# --- folders ------------------------------------------------------------------------------------------

def load_hf_checkpoint(folder: str) -> dict:
    """``{'model': state dict, 'args': Namespace}``, as our checkpoints are, from a transformers folder."""
    config, hf_state = read_hf_folder(folder)
    try:
        args = args_from_hf_config(config)
        return {"model": hf_to_ours(hf_state, args), "args": args}
    except HFCheckpointError as e:
        raise HFCheckpointError(f"{folder}: {e}") from e


def load_checkpoint_or_folder(path_or_url: str):
    """What ``--resume`` accepts: a checkpoint file or URL (``util.checkpoint.load_checkpoint``), or a
    Hugging Face folder, converted (``load_hf_checkpoint``)."""
    if os.path.isdir(path_or_url) and is_hf_folder(path_or_url):
        return load_hf_checkpoint(path_or_url)
    return load_checkpoint(path_or_url)


def save_hf_folder(checkpoint: dict, folder: str, naming: str = "resnet",
                   progress: Callable[[str], None] | None = None) -> None:
    """Write ``checkpoint`` ({model, args}) as a folder transformers' ``from_pretrained`` loads (the class
    config.json's ``architectures`` names): ``config.json`` and ``model.safetensors``. ``progress``
    receives what config.json could not hold, and a line on what was written."""
    args = checkpoint.get("args")
    if isinstance(args, dict):
        args = argparse.Namespace(**args)
    if args is None:
        raise HFCheckpointError("the checkpoint records no args: its architecture is unknown")
    notes = Notes()
    config = hf_config_from_args(args, naming, notes)
    tensors = ours_to_hf(checkpoint["model"], args, naming, untied=config.get("tie_word_embeddings") is False)
    write_hf_folder(folder, config, tensors)
    if progress is not None:
        for note in notes:
            progress(f"note: {note}")
        progress(f"wrote {len(tensors)} tensors and config.json ({config['architectures'][0]}) to {folder}")
