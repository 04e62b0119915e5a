"""config.json fields every DETR-like transformers model has, against our flags.

Reading: ``ConfigReader`` gives a field (transformers' default where config.json omits it) and makes
the one-line refusal that names it. Writing: ``shared_fields``; where transformers' config cannot hold
one of our values (its loss weights are integers), the field is left to transformers' default and a
``Notes`` entry says so.
"""
from __future__ import annotations

import argparse
import json
import math

from util.hf.folder import HFCheckpointError

_UNSET = object()
# --dataset_file for a classifier width that names a data set (others keep the parser's default and
# take the width from --num_classes).
_DATASET_FOR_CLASSES = {91: "coco", 250: "coco_panoptic"}
# The name transformers' published configs give a class id the data set does not use.
NO_CLASS = "N/A"


class ConfigReader:
    """A transformers config.json as a dict, with ``defaults`` for the fields it omits."""

    def __init__(self, config: dict, defaults: dict) -> None:
        self.config, self.defaults = config, defaults

    def get(self, name: str, default=None):
        value = self.config.get(name)
        if value is None:
            value = self.defaults.get(name, default)
        return value

    def refuse(self, name: str, why: str, value=_UNSET) -> HFCheckpointError:
        shown = self.config.get(name) if value is _UNSET else value
        return HFCheckpointError(f"config.json: {name} = {json.dumps(shown)}: {why}")


class Notes(list):
    """What a written config.json could not hold, one line each."""


# (config field, our flag): the Hungarian costs and loss weights, integers in transformers' configs.
_INTEGER_FIELDS = (("class_cost", "set_cost_class"), ("bbox_cost", "set_cost_bbox"),
                   ("giou_cost", "set_cost_giou"), ("bbox_loss_coefficient", "bbox_loss_coef"),
                   ("giou_loss_coefficient", "giou_loss_coef"), ("mask_loss_coefficient", "mask_loss_coef"),
                   ("dice_loss_coefficient", "dice_loss_coef"))


def _labels(reader: ConfigReader) -> dict:
    """--num_classes and class_names from ``id2label`` (transformers' classifier has one output per entry,
    ids 0..N-1); "N/A" entries and transformers' placeholder names ``LABEL_<id>`` name no class."""
    labels = reader.config.get("id2label")
    if not isinstance(labels, dict):
        return {"num_classes": int(reader.get("num_labels", 2)), "class_names": None}
    try:
        names = {int(k): str(v) for k, v in labels.items()}
    except ValueError:
        raise reader.refuse("id2label", "expected integer ids as keys", value=sorted(labels)[:5]) from None
    if sorted(names) != list(range(len(names))):
        raise reader.refuse("id2label", f"expected the ids 0..{len(names) - 1} (transformers' classifier has "
                                        "one output per entry)", value=sorted(names)[:5])
    if all(name == f"LABEL_{i}" for i, name in names.items()):
        names = {}
    named = {i: name for i, name in names.items() if name != NO_CLASS}
    return {"num_classes": len(labels), "class_names": named or None}


def read_shared(reader: ConfigReader) -> dict:
    """Our flags from the fields every DETR-like config has; refuses what our models cannot represent."""
    pairs = [("encoder_attention_heads", "decoder_attention_heads", "nheads"),
             ("encoder_ffn_dim", "decoder_ffn_dim", "dim_feedforward")]
    for enc, dec, flag in pairs:
        if reader.get(enc) != reader.get(dec):
            raise reader.refuse(dec, f"differs from {enc} = {reader.get(enc)}: our model has one --{flag} "
                                     "for both")
    if reader.get("activation_function", "relu") != "relu":
        raise reader.refuse("activation_function", "our layers use ReLU")
    if reader.get("num_channels", 3) != 3:
        raise reader.refuse("num_channels", "our backbone takes RGB images")
    position = reader.get("position_embedding_type", "sine")
    if position not in ("sine", "learned"):
        raise reader.refuse("position_embedding_type", "our position encodings are 'sine' and 'learned'")
    labels = _labels(reader)
    values = {
        "hidden_dim": int(reader.get("d_model", 256)),
        "nheads": int(reader.get("encoder_attention_heads", 8)),
        "enc_layers": int(reader.get("encoder_layers", 6)),
        "dec_layers": int(reader.get("decoder_layers", 6)),
        "dim_feedforward": int(reader.get("encoder_ffn_dim")), "dropout": float(reader.get("dropout", 0.1)),
        "position_embedding": position, "num_queries": int(reader.get("num_queries")),
        # transformers' auxiliary_loss (false in its published configs) switches its own training loss; the
        # published models were trained with the loss on every decoder layer, which ours keeps.
        "aux_loss": True, "pre_norm": False, **labels,
        # Every weight, the backbone's included, comes from the checkpoint.
        "no_pretrained_backbone": True,
    }
    if labels["num_classes"] in _DATASET_FOR_CLASSES:
        values["dataset_file"] = _DATASET_FOR_CLASSES[labels["num_classes"]]
    for field, flag in _INTEGER_FIELDS:
        if reader.get(field) is not None:
            values[flag] = reader.get(field)
    return values


def id2label(args: argparse.Namespace) -> dict[str, str]:
    """transformers' ``id2label`` for the classifier of ``args``: the data set's names (``args.class_names``
    when recorded), "N/A" for the ids it does not use; ``LABEL_<id>`` when it has no names."""
    from util.args import dataset_metadata

    metadata = dataset_metadata(args)
    names = metadata.class_names
    if names is None:
        return {str(i): f"LABEL_{i}" for i in range(metadata.num_classes)}
    return {str(i): names.get(i, NO_CLASS) for i in range(metadata.num_classes)}


def integer_field(args: argparse.Namespace, field: str, flag: str, notes: Notes) -> dict:
    """``{field: value}`` when our --flag is a whole number (transformers' config refuses another), else
    ``{}`` and a note."""
    value = getattr(args, flag)
    if float(value) == int(value):
        return {field: int(value)}
    notes.append(f"--{flag} {value} is not written: transformers' config holds {field} as an integer "
                 "(from_pretrained takes its default)")
    return {}


def shared_fields(args: argparse.Namespace, notes: Notes) -> dict:
    """config.json's fields that every DETR-like model type has, for ``args``."""
    if args.position_embedding not in ("sine", "learned"):
        raise HFCheckpointError(f"--position_embedding {args.position_embedding}: transformers has 'sine' "
                                "and 'learned'")
    if args.position_embedding == "sine" and not math.isclose(args.position_embedding_scale, 2 * math.pi):
        raise HFCheckpointError(f"--position_embedding_scale {args.position_embedding_scale}: transformers' "
                                "sine encoding has the scale 2 pi")
    labels = id2label(args)
    values = {
        "d_model": args.hidden_dim, "encoder_layers": args.enc_layers, "decoder_layers": args.dec_layers,
        "encoder_attention_heads": args.nheads, "decoder_attention_heads": args.nheads,
        "encoder_ffn_dim": args.dim_feedforward, "decoder_ffn_dim": args.dim_feedforward,
        "num_channels": 3, "num_queries": args.num_queries,
        "position_embedding_type": args.position_embedding,
        "activation_function": "relu", "dropout": float(args.dropout), "auxiliary_loss": bool(args.aux_loss),
        "use_pretrained_backbone": False,
        "id2label": labels, "label2id": {name: int(i) for i, name in labels.items()},
    }
    for field, flag in _INTEGER_FIELDS:
        values.update(integer_field(args, field, flag, notes))
    return values
