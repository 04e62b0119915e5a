"""DETR (``--meta_arch detr``): backbone, a 1x1 input projection of its last map, DETR's transformer
(``models/detr_transformer.py``, BatchFormerV2 in its encoder) and the class and box heads shared by every
decoder layer. ``models/detectors.py`` registers it; ``models.build`` adds the criterion (softmax
cross-entropy with ``--eos_coef``), the matcher and the post-processors of its classification.

Published keys (``reference/state_dict/detr*.json``): ``transformer.*``, ``class_embed`` (num_classes + 1
outputs: the last is "no object"), ``bbox_embed.layers.0..2``, ``query_embed`` (Q, C), ``input_proj``
(a conv, no norm), ``backbone.0.body.*``. With ``--masks``: ``detr.*``, ``bbox_attention.*``, ``mask_head.*``
(``build_mask_head``).

Shapes: B images, B' = num_streams * B (two streams in BatchFormerV2 training: rows B..2B-1 are images
0..B-1 again, through the BatchFormer), Q queries, C channels, D decoder layers.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from models.backbone import STRIDE4, build_backbone
from models.batchformer import BatchFormerConfig, detector_input
from models.classification import Classification
from models.detr_mask_head import DETRMaskHead
from models.detr_transformer import DETRTransformerOutput, Transformer, build_transformer
from models.heads import MLP, aux_outputs
from models.segmentation import MaskFeatures, MHAttentionMap
from util.misc import NestedTensor

# DETR's sine position encoding normalises the cumulative sums without Deformable DETR's half-pixel offset.
SINE_OFFSET = 0.0


@dataclass
class DETRState:
    """Intermediate results of one forward pass, for the mask head (``DETR.mask_features``)."""

    features: list[NestedTensor]  # backbone levels, finest first (B images): layer4, or layer2-4 with --masks
    extra_features: dict[str, NestedTensor]  # the backbone's other maps by name (STRIDE4 with --masks)
    projected: Tensor  # (B, C, H, W) input projection of the last level
    mask: Tensor  # (B, H, W) its padding
    transformer: DETRTransformerOutput


class DETR(nn.Module):
    """``num_queries`` learned object queries decoded into class logits and boxes."""

    def __init__(self, backbone: nn.Module, transformer: Transformer, num_classes: int, num_queries: int,
                 classification: Classification, aux_loss: bool = True) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, classification.num_logits(num_classes))
        classification.init_head(self.class_embed)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.aux_loss = aux_loss

    def forward(self, samples: NestedTensor | list[Tensor]) -> dict:
        """samples: a NestedTensor (B, 3, H, W) with its mask, or a list of (3, H, W) images.

        Returns ``pred_logits`` (B', Q, num_classes + 1), ``pred_boxes`` (B', Q, 4) normalised cxcywh,
        ``aux_outputs`` (decoder layers 0..D-2) with aux_loss, and ``num_streams``: B' = num_streams * B.
        """
        return self.forward_with_state(samples)[0]

    def forward_with_state(self, samples: NestedTensor | list[Tensor]) -> tuple[dict, DETRState]:
        samples = detector_input(samples, self.transformer.batchformer_spans_ranks())
        features, pos, extra_features = self.backbone.forward_levels(samples)
        src, mask = features[-1].decompose()
        projected = self.input_proj(src)
        t = self.transformer(projected, mask, self.query_embed.weight, pos[-1])
        logits = self.class_embed(t.hs)  # (D, B', Q, K)
        boxes = self.bbox_embed(t.hs).sigmoid()
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1], "num_streams": t.num_streams}
        if self.aux_loss:
            out["aux_outputs"] = aux_outputs(logits, boxes)
        return out, DETRState(features, extra_features, projected, mask, t)

    def mask_features(self, state: DETRState) -> MaskFeatures:
        """What DETR's mask head reads: the last layer's queries over the memory map, the input projection,
        and the backbone's stride-16, 8 and 4 maps (layer3, layer2, layer1)."""
        if STRIDE4 not in state.extra_features or len(state.features) < 3:
            raise ValueError("DETR's mask head needs the backbone's layer1-3 maps: build the model with "
                             "--masks")
        layer2, layer3 = state.features[0].tensors, state.features[1].tensors
        fpn = {16: layer3, 8: layer2, 4: state.extra_features[STRIDE4].tensors}
        t = state.transformer
        return MaskFeatures(t.hs[-1], t.memory, state.mask, fpn, t.num_streams, projected=state.projected)


def build(args, *, num_classes: int, classification: Classification,
          batchformer: BatchFormerConfig | None) -> DETR:
    """``--meta_arch detr`` (``models/detectors.py``): the detector of ``args``."""
    return DETR(build_backbone(args, sine_offset=SINE_OFFSET), build_transformer(args, batchformer),
                num_classes=num_classes, num_queries=args.num_queries, classification=classification,
                aux_loss=args.aux_loss)


def build_mask_head(model: DETR) -> tuple[MHAttentionMap, DETRMaskHead]:
    """``--masks``: the queries' attention over the memory (one softmax over a query's heads and positions,
    as published) and DETR's mask head on the backbone's layer3, layer2 and layer1 maps."""
    shapes = model.backbone.output_shape()
    if STRIDE4 not in shapes or len(model.backbone.num_channels) < 3:
        raise ValueError("DETR's mask head needs the backbone's layer1-3 maps: build the backbone for "
                         "--masks")
    c8, c16 = model.backbone.num_channels[0], model.backbone.num_channels[1]
    hidden_dim, nheads = model.transformer.d_model, model.transformer.nhead
    return (MHAttentionMap(hidden_dim, hidden_dim, nheads, dropout=0.0, softmax_over_heads=True),
            DETRMaskHead(hidden_dim, nheads, (c16, c8, shapes[STRIDE4].channels)))
