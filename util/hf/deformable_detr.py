"""transformers' ``deformable_detr`` (``DeformableDetrForObjectDetection``) against our Deformable DETR.

Our model shares tensors where transformers ties them: without box refinement one class head and one
box head serve every decoder layer (ours: ``class_embed.N`` are one tensor; transformers 5 saves
``class_embed.0``); with it the decoder's box heads are the detector's (``transformer.decoder.bbox_embed``
is ``bbox_embed``; transformers saves the decoder's copy), and two-stage adds the same for the class
heads. transformers 5 also ties a +refine model's per-layer class heads to the first and saves that
one; transformers 4 and the published +refine models have one per layer, so all are written.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from util.hf.config import ConfigReader, Notes
from util.hf.spec import HFModelType, NameMap, Rule, packed_qkv, renamed

_ATTENTION = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
_ENCODER_LAYER = {"norm1": "self_attn_layer_norm", "linear1": "fc1", "linear2": "fc2",
                  "norm2": "final_layer_norm", **{f"self_attn.{m}": f"self_attn.{m}" for m in _ATTENTION}}
_DECODER_LAYER = {"norm1": "encoder_attn_layer_norm", "norm2": "self_attn_layer_norm", "linear1": "fc1",
                  "linear2": "fc2", "norm3": "final_layer_norm", "self_attn.out_proj": "self_attn.out_proj",
                  **{f"cross_attn.{m}": f"encoder_attn.{m}" for m in _ATTENTION}}
# Two-stage proposal layers and the single-stage reference point layer: the same names under model.
_PROPOSALS = {name: name for name in ("reference_points", "enc_output", "enc_output_norm", "pos_trans",
                                      "pos_trans_norm")}

_RULES = (
    *renamed("transformer.encoder.layers.{i}.", "model.encoder.layers.{i}.", _ENCODER_LAYER),
    *renamed("transformer.decoder.layers.{i}.", "model.decoder.layers.{i}.", _DECODER_LAYER),
    packed_qkv("transformer.decoder.layers.{i}.self_attn", "model.decoder.layers.{i}.self_attn"),
    *renamed("transformer.", "model.", _PROPOSALS),
    Rule("transformer.level_embed", "model.level_embed"),
    Rule("transformer.decoder.bbox_embed.{i}.layers.{j}.{p}", "model.decoder.bbox_embed.{i}.layers.{j}.{p}"),
    Rule("transformer.decoder.class_embed.{i}.{p}", "model.decoder.class_embed.{i}.{p}"),
    Rule("input_proj.{i}.{j}.{p}", "model.input_proj.{i}.{j}.{p}"),
    Rule("query_embed.weight", "model.query_position_embeddings.weight"),
    Rule("class_embed.{i}.{p}", "class_embed.{i}.{p}"),
    Rule("bbox_embed.{i}.layers.{j}.{p}", "bbox_embed.{i}.layers.{j}.{p}"),
)
# transformers >= 5 module names -> the names it saves.
_RUNTIME = ((r"(layers\.\d+)\.mlp\.fc([12])\.", r"\1.fc\2."),
            (r"\.self_attn\.o_proj\.", ".self_attn.out_proj."))
# transformers' tie map: class_embed.N and bbox_embed.N (N > 0) are class_embed.0 and bbox_embed.0.
_HEAD_N = re.compile(r"^(class_embed|bbox_embed)\.[1-9]\d*\.")


def _tie_source(name: str) -> str | None:
    tied = _HEAD_N.sub(r"\1.0.", name)
    return tied if tied != name else None


def _saved_choice(candidates: Sequence[list[str]]) -> list[str]:
    """Of one tensor's transformers names, the one ``save_pretrained`` keeps: the tie's source, i.e. the
    decoder's copy (``model.decoder.*``) over the detector's, then the lowest layer index."""
    def rank(names: list[str]) -> tuple:
        indices = [int(n) for n in re.findall(r"\.(\d+)\.", names[0])]
        return (not names[0].startswith("model.decoder."), indices)

    return min(candidates, key=rank)


def _read(reader: ConfigReader) -> dict:
    levels = int(reader.get("num_feature_levels", 4))
    if levels == 2:
        raise reader.refuse("num_feature_levels", "our multi-scale model takes three backbone levels, so 1 "
                                                  "or at least 3")
    two_stage = bool(reader.get("two_stage", False))
    return {
        "num_feature_levels": levels, "enc_n_points": int(reader.get("encoder_n_points", 4)),
        "dec_n_points": int(reader.get("decoder_n_points", 4)),
        "with_box_refine": bool(reader.get("with_box_refine", False)), "two_stage": two_stage,
        "num_queries": int(reader.get("two_stage_num_proposals" if two_stage else "num_queries", 300)),
        "focal_alpha": float(reader.get("focal_alpha", 0.25)),
    }


def _write(args: argparse.Namespace, notes: Notes) -> dict:
    heads = args.dec_layers + (1 if args.two_stage else 0)
    return {
        "encoder_n_points": args.enc_n_points, "decoder_n_points": args.dec_n_points,
        "num_feature_levels": args.num_feature_levels, "two_stage_num_proposals": args.num_queries,
        "with_box_refine": bool(args.with_box_refine), "two_stage": bool(args.two_stage),
        "focal_alpha": float(args.focal_alpha),
        # transformers 5 ties heads 1.. to head 0 and refuses to build a model with no head 1 to tie;
        # untied, it loads every name from the file (all are written then).
        **({"tie_word_embeddings": False} if heads < 2 else {}),
    }


DEFORMABLE_DETR = HFModelType(
    model_type="deformable_detr", meta_arch="deformable_detr",
    detection="DeformableDetrForObjectDetection", segmentation=None, detector_prefix="",
    detector=NameMap(_RULES, _RUNTIME), read_config=_read, write_config=_write,
    backbone_stages=lambda masks, levels: [2, 3, 4] if levels > 1 else [4], all_stages_read=True,
    built_by_models=True, defaults={"encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024, "num_queries": 300},
    tie_source=_tie_source, saved_choice=_saved_choice,
)
