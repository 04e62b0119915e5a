"""transformers' ``detr`` (``DetrForObjectDetection``, ``DetrForSegmentation``) against our DETR, and
the pieces Conditional DETR shares with it (the encoder, the heads, the mask head).

Our names are the published DETR's (``reference/state_dict/detr*.json``): ``nn.MultiheadAttention``
with a packed ``in_proj`` where transformers has q, k, v projections; the class head has
num_classes + 1 outputs (the last is "no object"), as transformers' ``num_labels + 1``.
transformers' DETR is post-norm only (the published models are); it weights the class loss 1.
"""
from __future__ import annotations

import argparse

from util.hf.config import ConfigReader, Notes
from util.hf.folder import HFCheckpointError
from util.hf.spec import HFModelType, NameMap, Rule, packed_qkv, renamed

ENCODER_RULES = (
    packed_qkv("transformer.encoder.layers.{i}.self_attn", "model.encoder.layers.{i}.self_attn"),
    *renamed("transformer.encoder.layers.{i}.", "model.encoder.layers.{i}.",
             {"self_attn.out_proj": "self_attn.out_proj", "linear1": "fc1", "linear2": "fc2",
              "norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}),
)
# The decoder layer's feed-forward and norms: norm1 after self-attention, norm2 after cross-attention.
DECODER_LAYER = {"self_attn.out_proj": "self_attn.out_proj", "linear1": "fc1", "linear2": "fc2",
                 "norm1": "self_attn_layer_norm", "norm2": "encoder_attn_layer_norm",
                 "norm3": "final_layer_norm"}
HEAD_RULES = (
    Rule("transformer.decoder.norm.{p}", "model.decoder.layernorm.{p}"),
    Rule("query_embed.weight", "model.query_position_embeddings.weight"),
    Rule("input_proj.{p}", "model.input_projection.{p}"),
    Rule("class_embed.{p}", "class_labels_classifier.{p}"),
    Rule("bbox_embed.layers.{i}.{p}", "bbox_predictor.layers.{i}.{p}"),
)
# transformers >= 5 module names -> the names it saves.
RUNTIME = ((r"(layers\.\d+)\.mlp\.fc([12])\.", r"\1.fc\2."),
           (r"\.(self_attn|encoder_attn)\.o_proj\.", r".\1.out_proj."))

# DETR's mask head (``bbox_attention``, ``mask_head``): transformers saves it under the published names.
MASK_HEAD = NameMap(
    rules=(Rule("bbox_attention.q_linear.{p}", "bbox_attention.q_linear.{p}"),
           Rule("bbox_attention.k_linear.{p}", "bbox_attention.k_linear.{p}"),
           *(Rule(f"mask_head.{name}{{i}}.{{p}}", f"mask_head.{name}{{i}}.{{p}}")
             for name in ("lay", "gn", "adapter")),
           Rule("mask_head.out_lay.{p}", "mask_head.out_lay.{p}")),
    runtime=((r"^bbox_attention\.([qk])_proj\.", r"bbox_attention.\1_linear."),
             (r"^mask_head\.conv([12])\.conv\.", r"mask_head.lay\1."),
             (r"^mask_head\.conv([12])\.norm\.", r"mask_head.gn\1."),
             (r"^mask_head\.output_conv\.", "mask_head.out_lay."),
             *((rf"^mask_head\.fpn_stages\.{k}\.fpn_adapter\.", f"mask_head.adapter{k + 1}.")
               for k in range(3)),
             *((rf"^mask_head\.fpn_stages\.{k}\.refine\.conv\.", f"mask_head.lay{k + 3}.") for k in range(3)),
             *((rf"^mask_head\.fpn_stages\.{k}\.refine\.norm\.", f"mask_head.gn{k + 3}.") for k in range(3))),
)


def detr_stages(masks: bool, levels: int) -> list[int]:
    """The ResNet stages a DETR-like model reads: the last; all four for the mask head's FPN."""
    return [1, 2, 3, 4] if masks else [4]


def refuse_pre_norm(reader: ConfigReader) -> None:
    if reader.get("normalize_before", False) or reader.get("pre_norm", False):
        raise reader.refuse("normalize_before" if "normalize_before" in reader.config else "pre_norm",
                            "transformers' DETR-like models are post-norm only, so these weights are not "
                            "theirs")


def check_post_norm(args: argparse.Namespace) -> None:
    if getattr(args, "pre_norm", False):
        raise HFCheckpointError("--pre_norm: transformers' DETR-like models are post-norm only")


_RULES = (
    *ENCODER_RULES,
    packed_qkv("transformer.decoder.layers.{i}.self_attn", "model.decoder.layers.{i}.self_attn"),
    packed_qkv("transformer.decoder.layers.{i}.multihead_attn", "model.decoder.layers.{i}.encoder_attn"),
    *renamed("transformer.decoder.layers.{i}.", "model.decoder.layers.{i}.",
             {**DECODER_LAYER, "multihead_attn.out_proj": "encoder_attn.out_proj"}),
    *HEAD_RULES,
)


def _read(reader: ConfigReader) -> dict:
    refuse_pre_norm(reader)
    return {"num_feature_levels": 1, "eos_coef": float(reader.get("eos_coefficient", 0.1)),
            "cls_loss_coef": 1}


def _write(args: argparse.Namespace, notes: Notes) -> dict:
    check_post_norm(args)
    return {"eos_coefficient": float(args.eos_coef)}


DETR = HFModelType(
    model_type="detr", meta_arch="detr", detection="DetrForObjectDetection",
    segmentation="DetrForSegmentation",
    detector_prefix="detr.", detector=NameMap(_RULES, RUNTIME), read_config=_read, write_config=_write,
    backbone_stages=detr_stages, all_stages_read=False, built_by_models=True, mask_head=MASK_HEAD,
    defaults={"encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "num_queries": 100},
)
