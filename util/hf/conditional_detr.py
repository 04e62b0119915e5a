"""transformers' ``conditional_detr`` (``ConditionalDetrForObjectDetection``, ``...ForSegmentation``)
against our Conditional DETR (``reference/state_dict/conditional_detr.json``).

The encoder, heads and mask head are DETR's (``util.hf.detr``). Each decoder layer has its own
content and position projections (``sa_*`` for self-attention, ``ca_*`` for cross-attention, which
transformers saves under the same names; ``ca_qpos_proj`` only in layer 0) and attention modules with
an output projection only; the class head has num_classes outputs (sigmoid focal, no "no object").
"""
from __future__ import annotations

import argparse

from util.hf.config import ConfigReader, Notes, integer_field
from util.hf.detr import (
    DECODER_LAYER,
    ENCODER_RULES,
    HEAD_RULES,
    MASK_HEAD,
    RUNTIME,
    check_post_norm,
    detr_stages,
    refuse_pre_norm,
)
from util.hf.spec import HFModelType, NameMap, Rule, renamed

_PROJECTIONS = ("qcontent", "qpos", "kcontent", "kpos", "v")
_RULES = (
    *ENCODER_RULES,
    *renamed("transformer.decoder.layers.{i}.", "model.decoder.layers.{i}.",
             {**DECODER_LAYER, "cross_attn.out_proj": "encoder_attn.out_proj",
              **{f"sa_{p}_proj": f"sa_{p}_proj" for p in _PROJECTIONS},
              **{f"ca_{p}_proj": f"ca_{p}_proj" for p in (*_PROJECTIONS, "qpos_sine")}}),
    Rule("transformer.decoder.query_scale.layers.{i}.{p}", "model.decoder.query_scale.layers.{i}.{p}"),
    Rule("transformer.decoder.ref_point_head.layers.{i}.{p}", "model.decoder.ref_point_head.layers.{i}.{p}"),
    *HEAD_RULES,
)
# transformers >= 5 keeps the decoder's projections inside its attention modules: it saves
# self_attn.q_content_proj as sa_qcontent_proj, encoder_attn.q_pos_sine_proj as ca_qpos_sine_proj.
_THEIR_PROJECTIONS = {"q_content": "qcontent", "q_pos": "qpos", "k_content": "kcontent", "k_pos": "kpos",
                      "v": "v", "q_pos_sine": "qpos_sine"}
_RUNTIME = (*RUNTIME, *((rf"(decoder\.layers\.\d+)\.{module}\.{theirs}_proj\.", rf"\1.{side}_{ours}_proj.")
                        for module, side in (("self_attn", "sa"), ("encoder_attn", "ca"))
                        for theirs, ours in _THEIR_PROJECTIONS.items()))


def _read(reader: ConfigReader) -> dict:
    refuse_pre_norm(reader)
    return {"num_feature_levels": 1, "cls_loss_coef": reader.get("cls_loss_coefficient"),
            "focal_alpha": float(reader.get("focal_alpha", 0.25))}


def _write(args: argparse.Namespace, notes: Notes) -> dict:
    check_post_norm(args)
    return {**integer_field(args, "cls_loss_coefficient", "cls_loss_coef", notes),
            "focal_alpha": float(args.focal_alpha)}


CONDITIONAL_DETR = HFModelType(
    model_type="conditional_detr", meta_arch="conditional_detr",
    detection="ConditionalDetrForObjectDetection", segmentation="ConditionalDetrForSegmentation",
    detector_prefix="conditional_detr.",
    detector=NameMap(_RULES, _RUNTIME), read_config=_read, write_config=_write, backbone_stages=detr_stages,
    all_stages_read=False, built_by_models=False, mask_head=MASK_HEAD,
    defaults={"encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "num_queries": 300, "class_cost": 2,
              "cls_loss_coefficient": 2},
)
