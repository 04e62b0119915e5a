"""Mask heads on DETR-like detectors, and the segmentation / panoptic post-processors.

Design (docs/segmentation.md): the final decoder embeddings (B', Q, C) attend, head by head, over a map
of the encoder memory (``MHAttentionMap``); a mask head turns each query's M attention maps, with
per-image maps (the memory, the detector's input projection, the backbone's finer features), into mask
logits ``pred_masks`` (B', Q, H/4, W/4). ``DETRsegm`` wraps any detector that hands it these maps as a
``MaskFeatures`` (``mask_features(state)``), whatever its memory's layout: Deformable DETR's stride-8
level with ``MaskHeadFPN``; DETR's stride-32 memory with its published head (``build_mask_head`` of each
detector module, ``models/detectors.py``).

B' = num_streams * B (two streams in BatchFormerV2 training, as the detector's output says): both streams
share the head; the per-image maps (computed once, for the B images, before the BatchFormer) are repeated
for the second stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.classification import Classification, SigmoidFocal
from util.misc import NestedTensor, nested_tensor_from_tensor_list
from util.panoptic import png_bytes

__all__ = ["DETRsegm", "MHAttentionMap", "MaskFeatures", "MaskHeadFPN", "PostProcessPanoptic",
           "PostProcessSegm"]


@dataclass
class MaskFeatures:
    """What a detector hands its mask head from one forward pass (``mask_features(state)``).

    Per stream (B' = num_streams * B rows): ``queries`` (B', Q, C), the last decoder layer's embeddings,
    and ``memory`` (B', C, H, W), the encoder memory they attend over. Per image (B rows, computed before
    the BatchFormer; ``DETRsegm`` repeats them for the second stream): ``mask`` (B, H, W), True on the
    memory map's padding; ``fpn``: stride -> (B, c_s, H_s, W_s), the backbone maps finer than the memory
    that a head may fuse (Deformable DETR: 8 and 4; DETR: 16, 8, 4); ``projected`` (B, C, H, W), the
    input projection at the memory's stride, for heads that read it (DETR's), else None.
    """

    queries: Tensor
    memory: Tensor
    mask: Tensor
    fpn: dict[int, Tensor]
    num_streams: int = 1
    projected: Tensor | None = None


class MHAttentionMap(nn.Module):
    """Multi-head attention weights (no values) of queries over a feature map.

    q (B, Q, C) and k (B, C, H, W) -> (B, Q, M, H, W); each head's weights are a softmax over the
    H * W positions (padding excluded), so each head says where in the image its query looks. With
    ``softmax_over_heads`` (DETR's published head) one softmax runs over the M * H * W weights of a query.
    """

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0,
                 softmax_over_heads: bool = False):
        super().__init__()
        if hidden_dim % num_heads != 0:
            raise ValueError(f"MHAttentionMap: hidden_dim {hidden_dim} is not divisible by "
                             f"num_heads {num_heads}")
        self.num_heads = num_heads
        self.softmax_dims = 2 if softmax_over_heads else 3  # weights.flatten(dims): what one softmax spans
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim)
        self.k_linear = nn.Linear(query_dim, hidden_dim)
        self.scale = (hidden_dim / num_heads) ** -0.5
        for lin in (self.q_linear, self.k_linear):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.weights(self.project_queries(q), self.project_keys(k), mask)

    def project_queries(self, q: Tensor) -> Tensor:
        """q (B, Q, C) -> scaled per-head queries (B, Q, M, D/M)."""
        q = self.q_linear(q) * self.scale  # (B, Q, D)
        return q.view(q.shape[0], q.shape[1], self.num_heads, -1)

    def project_keys(self, k: Tensor) -> Tensor:
        """k (B, C, H, W) -> per-head keys (B, M, D/M, H, W); the projection is a 1x1 conv."""
        b, _, h, w = k.shape
        k = F.conv2d(k, self.k_linear.weight[:, :, None, None], self.k_linear.bias)
        return k.view(b, self.num_heads, -1, h, w)

    def weights(self, qh: Tensor, kh: Tensor, mask: Tensor | None = None) -> Tensor:
        """qh (B, Q, M, D/M), kh (B, M, D/M, H, W), mask (B, H, W) -> (B, Q, M, H, W)."""
        weights = torch.einsum("bqmd,bmdhw->bqmhw", qh, kh)
        if mask is not None:
            weights = weights.masked_fill(mask[:, None, None], float("-inf"))
        weights = weights.flatten(self.softmax_dims).softmax(-1).view(weights.shape)
        return self.dropout(weights)


def conv_gn(c_in: int, c_out: int, kernel: int = 3, bias: bool = True) -> tuple[nn.Conv2d, nn.GroupNorm]:
    """A conv of a mask head and its GroupNorm: 8 groups (DETR's), fewer where the channels are fewer."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias)
    return conv, nn.GroupNorm(min(8, c_out), c_out)


def init_convs(head: nn.Module) -> None:
    """A mask head's convs start as DETR's: kaiming-uniform (a=1) weights, zero biases."""
    for mod in head.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_uniform_(mod.weight, a=1)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


class MaskHeadFPN(nn.Module):
    """Deformable DETR's mask head: per-query mask logits at stride 4 from attention maps over the stride-8
    memory level, that level and the backbone's stride-8 and stride-4 features.

    Stride 8: conv3x3 + GroupNorm over the memory (C), once per image, plus conv3x3 + GroupNorm
    over the query's M attention maps, per query, summed through a ReLU; no (B*Q, C, H/8, W/8) copy
    of the memory is made. The two branches are normalised apart so that the memory cannot drown
    the per-query signal: under one norm of their sum (DETR's form), attention maps that are a
    softmax over thousands of positions reached it at ~1/1000 of the memory's scale, and every
    query of an image got the same mask. Then the layer2 features added through a 1x1 adapter,
    conv3x3, and a conv3x3 narrowing to ``dim4``.
    Stride 4: nearest upsampling, the layer1 features added through a 1x1 adapter, conv3x3, and a
    conv3x3 to one channel. Every per-query map has few channels (C/4 at stride 8, C/16 at stride 4).
    """

    def __init__(self, hidden_dim: int, num_heads: int, c8: int, c4: int):
        super().__init__()
        dim8, dim4 = max(hidden_dim // 4, 8), max(hidden_dim // 16, 8)
        self.memory_conv, self.gn_memory = conv_gn(hidden_dim, dim8)
        self.attn_conv, self.gn_attn = conv_gn(num_heads, dim8)
        self.adapter8 = nn.Conv2d(c8, dim8, 1)
        self.conv8, self.gn8 = conv_gn(dim8, dim8)
        self.narrow, self.gn_narrow = conv_gn(dim8, dim4)
        self.adapter4 = nn.Conv2d(c4, dim4, 1)
        self.conv4, self.gn4 = conv_gn(dim4, dim4)
        self.out = nn.Conv2d(dim4, 1, 3, padding=1)
        init_convs(self)

    fpn_strides = (8, 4)  # the backbone maps it fuses (MaskFeatures.fpn), in the order image_terms takes them

    def forward(self, attn: Tensor, memory: Tensor, mask: Tensor, fpn: list[Tensor],
                projected: Tensor | None = None) -> Tensor:
        """attn (B, Q, M, H8, W8); memory (B, C, H8, W8); mask (B, H8, W8); fpn the stride-8 (B, c8, H8, W8)
        and stride-4 (B, c4, H4, W4) maps. Returns mask logits (B, Q, H4, W4)."""
        return self.query_masks(attn, *self.image_terms(memory, mask, fpn, projected))

    def image_terms(self, memory: Tensor, mask: Tensor, fpn: list[Tensor],
                    projected: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What every query of an image shares: its unpadded positions (B,), the normalised memory
        (B, dim8, H8, W8) and the adapted layer2 (B, dim8, H8, W8) and layer1 (B, dim4, H4, W4) features.
        The input projection is not read."""
        feat8, feat4 = fpn
        valid = (~mask).flatten(1).sum(1)
        return valid, self.gn_memory(self.memory_conv(memory)), self.adapter8(feat8), self.adapter4(feat4)

    def query_masks(self, attn: Tensor, valid: Tensor, per_image: Tensor, adapted8: Tensor,
                    adapted4: Tensor) -> Tensor:
        """attn (B, Q, M, H8, W8) and ``image_terms`` -> mask logits (B, Q, H4, W4)."""
        # in units of the uniform weight: 1 everywhere for a query that looks nowhere in particular,
        # at any image size
        attn = attn * valid.to(attn.dtype).view(-1, 1, 1, 1, 1)
        b, q, m, h8, w8 = attn.shape
        per_query = self.gn_attn(self.attn_conv(attn.reshape(b * q, m, h8, w8)))  # (B*Q, dim8, H8, W8)
        x = F.relu(per_query.view(b, q, -1, h8, w8) + per_image[:, None])
        x = (x + adapted8[:, None]).flatten(0, 1)
        x = F.relu(self.gn8(self.conv8(x)))
        x = F.relu(self.gn_narrow(self.narrow(x)))  # (B*Q, dim4, H8, W8)
        h4, w4 = adapted4.shape[-2:]
        x = F.interpolate(x, size=(h4, w4), mode="nearest")
        x = (x.view(b, q, -1, h4, w4) + adapted4[:, None]).flatten(0, 1)
        x = F.relu(self.gn4(self.conv4(x)))
        return self.out(x).view(b, q, h4, w4)


def _in_query_chunks(fn, qh: Tensor, inputs: tuple[Tensor, ...], chunk_rows: int) -> Tensor:
    """fn(qh[:, chunk], *inputs) over chunks of about ``chunk_rows`` (image, query) rows, concatenated
    along the queries: qh (B, Q, ...) -> (B, Q, H4, W4). The chunk bounds come from shapes only."""
    b, q = qh.shape[:2]
    step = max(1, chunk_rows // max(b, 1))
    return torch.cat([fn(qh[:, i : i + step], *inputs) for i in range(0, q, step)], 1)


class _MatchedQueryMasks(torch.autograd.Function):
    """The per-query part of the mask head, storing no activation: forward in query chunks without a
    graph; backward recomputes, chunk by chunk, only the (image, query) rows whose mask logits
    received a non-zero gradient (the loss reads the matched queries alone) and backpropagates
    through them. A row with an all-zero gradient contributes exactly zero, so the gradients are those
    of the full computation, up to the order of the sums.

    apply(fn, chunk_rows, num_inputs, qh (B, Q, ...), *inputs (B, ...), *params): fn(qh, *inputs) ->
    (B, Q, H4, W4) uses ``params`` (passed so that they get their gradients) through its modules.
    fn must be deterministic (the mask head has no dropout).
    """

    @staticmethod
    def forward(ctx, fn, chunk_rows: int, num_inputs: int, qh: Tensor, *rest: Tensor) -> Tensor:
        inputs, params = rest[:num_inputs], rest[num_inputs:]
        ctx.fn, ctx.chunk_rows, ctx.params = fn, chunk_rows, params
        device_type = qh.device.type
        # The backward pass runs outside the caller's autocast: recompute in the forward's precision.
        ctx.autocast = (device_type, torch.get_autocast_dtype(device_type),
                        torch.is_autocast_enabled(device_type))
        ctx.save_for_backward(qh, *inputs)
        return _in_query_chunks(fn, qh, inputs, chunk_rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        qh, *inputs = ctx.saved_tensors
        leaves_need = ctx.needs_input_grad[3:]  # qh, inputs, params
        params = ctx.params
        sums = [torch.zeros_like(t) if need else None
                for t, need in zip([qh, *inputs, *params], leaves_need)]
        active = grad.flatten(2).ne(0).any(-1)  # (B, Q): the rows the loss reads
        device_type, dtype, enabled = ctx.autocast
        with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for b in range(qh.shape[0]):
                matched = active[b].nonzero()[:, 0]
                for rows in matched.split(max(1, ctx.chunk_rows)) if len(matched) else ():
                    leaves = [qh[b : b + 1, rows]] + [t[b : b + 1] for t in inputs]
                    leaves = [t.detach().requires_grad_(need) for t, need in zip(leaves, leaves_need)]
                    out = ctx.fn(leaves[0], *leaves[1:])
                    wrt = [(i, t) for i, t in enumerate([*leaves, *params]) if leaves_need[i]]
                    grads = torch.autograd.grad(out, [t for _, t in wrt], grad[b : b + 1, rows],
                                                allow_unused=True)
                    for (i, _), g in zip(wrt, grads):
                        if g is None:
                            continue
                        if i == 0:
                            sums[0][b : b + 1, rows] += g
                        elif i <= len(inputs):
                            sums[i][b : b + 1] += g
                        else:
                            sums[i] += g
        return (None, None, None, *sums)


class DETRsegm(nn.Module):
    """A detector plus a mask head; ``model.detr`` is the detector (checkpoint keys ``detr.*``, then
    ``bbox_attention.*`` and ``mask_head.*``, as published).

    The detector provides ``forward_with_state(samples) -> (outputs, state)`` and ``mask_features(state)
    -> MaskFeatures``; ``bbox_attention`` is the ``MHAttentionMap`` of the queries over its memory; the
    mask head has ``fpn_strides`` (the ``MaskFeatures.fpn`` maps it reads, in its order),
    ``image_terms(memory, mask, fpn, projected)`` (per-image tensors every query shares, image dimension
    first) and ``query_masks(attn, *image_terms)`` (B, Q, H/4, W/4), and is deterministic (no dropout).

    ``freeze_detr`` (the ``--frozen_weights`` recipe): the detector's parameters get no gradient and
    only ``bbox_attention`` and ``mask_head`` train; otherwise everything trains jointly.

    Memory: the per-query maps of the head (about 38 MB of stored activations per query and image at
    800x1333 for Deformable DETR's, docs/benchmarks.md) are computed ``mask_chunk_rows`` (image, query)
    rows at a time and not stored; in training the backward pass recomputes only the queries the loss
    reads (the matched ones). ``mask_chunk_rows`` 0 computes every query at once and stores everything
    (the plain autograd graph: fastest where it fits).
    """

    mask_chunk_rows = 64

    def __init__(self, detr: nn.Module, bbox_attention: MHAttentionMap, mask_head: nn.Module,
                 freeze_detr: bool = False):
        super().__init__()
        self.detr = detr
        if freeze_detr:
            for p in self.detr.parameters():
                p.requires_grad_(False)
        self.bbox_attention = bbox_attention
        self.mask_head = mask_head

    def forward(self, samples: NestedTensor | list[Tensor]) -> dict:
        """The detector's outputs plus ``pred_masks`` (B', Q, H/4, W/4) mask logits."""
        if not isinstance(samples, NestedTensor):
            samples = nested_tensor_from_tensor_list(list(samples))
        out, state = self.detr.forward_with_state(samples)
        out["pred_masks"] = self.predict_masks(self.detr.mask_features(state))
        return out

    def predict_masks(self, features: MaskFeatures) -> Tensor:
        """The detector's ``MaskFeatures`` -> mask logits (B', Q, H/4, W/4)."""
        streams = features.num_streams

        def every_stream(t: Tensor | None) -> Tensor | None:  # stream 1 holds the same B images
            return t.repeat(streams, *([1] * (t.dim() - 1))) if t is not None and streams > 1 else t

        mask = every_stream(features.mask)
        fpn = [every_stream(features.fpn[stride]) for stride in self.mask_head.fpn_strides]
        terms = self.mask_head.image_terms(features.memory, mask, fpn, every_stream(features.projected))
        qh = self.bbox_attention.project_queries(features.queries)  # (B', Q, M, D/M)
        kh = self.bbox_attention.project_keys(features.memory)  # (B', M, D/M, H, W)
        inputs = (kh, mask, *terms)
        if self.mask_chunk_rows <= 0:
            return self._query_masks(qh, *inputs)
        params = [p for m in (self.bbox_attention, self.mask_head) for p in m.parameters() if p.requires_grad]
        if torch.is_grad_enabled() and (params or any(t.requires_grad for t in (qh, *inputs))):
            return _MatchedQueryMasks.apply(self._query_masks, self.mask_chunk_rows, len(inputs), qh, *inputs,
                                            *params)
        return _in_query_chunks(self._query_masks, qh, inputs, self.mask_chunk_rows)

    def _query_masks(self, qh: Tensor, kh: Tensor, mask: Tensor, *terms: Tensor) -> Tensor:
        """Mask logits (B, Q, H4, W4) of the queries qh (B, Q, M, D/M)."""
        attn = self.bbox_attention.weights(qh, kh, mask=mask)  # (B, Q, M, H, W)
        return self.mask_head.query_masks(attn, *terms)


def _masks_at_size(mask_logits: Tensor, processed_size: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Stride-4 logits (n, h4, w4) of a padded batch -> logits (n, H, W) of one image at ``size``.

    Stride-4 cell j covers input pixels [4j, 4j + 4): upsample 4x, crop the image's processed
    (unpadded) area, then resize to the requested size."""
    h4, w4 = mask_logits.shape[-2:]
    x = F.interpolate(mask_logits[:, None].float(), size=(4 * h4, 4 * w4), mode="bilinear",
                      align_corners=False)
    x = x[:, :, : processed_size[0], : processed_size[1]]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x[:, 0]


class PostProcessSegm(nn.Module):
    """Adds ``masks`` (k, 1, H, W) bool at the original size to the ``PostProcess`` detections, which
    must come from the same ``classification`` (the queries of the detections are selected again)."""

    def __init__(self, threshold: float = 0.5, classification: Classification | None = None):
        super().__init__()
        self.threshold = threshold
        self.classification = SigmoidFocal() if classification is None else classification

    @torch.no_grad()
    def forward(self, results: list[dict], outputs: dict, orig_target_sizes: Tensor,
                max_target_sizes: Tensor) -> list[dict]:
        """results: ``PostProcess`` outputs; orig_target_sizes / max_target_sizes: (B, 2) as (h, w),
        the original image sizes and the sizes the images had in the model's (padded) input."""
        pred_masks = outputs["pred_masks"]
        if len(results) != pred_masks.shape[0]:
            raise ValueError(f"PostProcessSegm: {len(results)} results for {pred_masks.shape[0]} "
                             "images of masks")
        logit_threshold = math.log(self.threshold / (1 - self.threshold))
        for i, res in enumerate(results):
            scores, _, query_idx = self.classification.detections(outputs["pred_logits"][i : i + 1],
                                                                  len(res["scores"]))
            if not torch.allclose(scores[0], res["scores"].to(scores.device)):
                raise ValueError("PostProcessSegm: the detections do not come from PostProcess on "
                                 "these outputs")
            processed = tuple(int(v) for v in max_target_sizes[i])
            orig = tuple(int(v) for v in orig_target_sizes[i])
            logits = _masks_at_size(pred_masks[i, query_idx[0]], processed, orig)
            res["masks"] = (logits > logit_threshold)[:, None].cpu()
        return results


class PostProcessPanoptic(nn.Module):
    """Non-overlapping things and stuff from the confident queries, as a COCO panoptic PNG.

    1. Keep the queries whose best class score (``Classification.class_scores``: sigmoid, or DETR's softmax
       without "no object"; over the data set's categories) exceeds ``threshold`` (published: 0.85 for
       DETR, where it equals DETR's "best class is not no-object and above 0.85" as any probability
       above 0.5 is the best).
    2. Each pixel goes to the kept query with the highest score x mask probability, so a confident
       query wins the pixels it shares with a weaker duplicate.
    3. A query's segment is the pixels it won inside its own mask (probability >= 0.5). It is
       dropped when that is under ``overlap`` of its own mask: a duplicate or a query mostly hidden
       behind others, which would cost a false positive and split the segment it overlaps.
    4. Queries of the same stuff class form one segment; segments smaller than ``min_area`` pixels
       are dropped. Pixels left to nobody are VOID (id 0).
    """

    def __init__(self, is_thing_map: dict[int, bool], threshold: float = 0.3, overlap: float = 0.8,
                 min_area: int = 16, classification: Classification | None = None):
        """is_thing_map: every category id of the data set -> isthing; other classes are never output.
        classification: the detector's (sigmoid focal by default)."""
        super().__init__()
        if not 0 <= threshold < 1:
            raise ValueError(f"PostProcessPanoptic: the score threshold (--panoptic_threshold) must be in "
                             f"[0, 1), got {threshold}")
        if not 0 < overlap <= 1:
            raise ValueError(f"PostProcessPanoptic: overlap must be in (0, 1], got {overlap}")
        self.is_thing_map = is_thing_map
        self.threshold = threshold
        self.overlap = overlap
        self.min_area = min_area
        self.classification = SigmoidFocal() if classification is None else classification

    @torch.no_grad()
    def forward(self, outputs: dict, processed_sizes: Tensor,
                target_sizes: Tensor | None = None) -> list[dict]:
        """processed_sizes: (B, 2) (h, w) of the images in the model's input; target_sizes: (B, 2)
        original sizes (default: the processed ones). Returns per image {png_string, segments_info}
        with segments_info entries {id, category_id, isthing, area}."""
        if target_sizes is None:
            target_sizes = processed_sizes
        logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if not (len(logits) == len(processed_sizes) == len(target_sizes)):
            raise ValueError("PostProcessPanoptic: outputs, processed_sizes and target_sizes differ in "
                             "batch size")
        class_ids = torch.as_tensor(sorted(c for c in self.is_thing_map if 0 <= c < logits.shape[-1]),
                                    dtype=torch.long, device=logits.device)
        results = []
        for i in range(len(logits)):
            # (Q,): the best of the data set's classes
            scores, best = self.classification.class_scores(logits[i])[:, class_ids].max(-1)
            keep = (scores > self.threshold).nonzero()[:, 0]
            keep = keep[scores[keep].argsort(descending=True)]  # segment ids follow the scores
            size = tuple(int(v) for v in target_sizes[i])
            mask_logits = _masks_at_size(pred_masks[i, keep], tuple(int(v) for v in processed_sizes[i]), size)
            ids, segments = self.segments(mask_logits, scores[keep], class_ids[best[keep]].tolist())
            results.append({"png_string": png_bytes(ids), "segments_info": segments})
        return results

    def segments(self, mask_logits: Tensor, scores: Tensor,
                 labels: list[int]) -> tuple[np.ndarray, list[dict]]:
        """(n, H, W) mask logits of the kept queries, their (n,) scores and labels -> (H, W) ids and
        segments_info."""
        h, w = mask_logits.shape[-2:]
        ids = torch.zeros((h, w), dtype=torch.long, device=mask_logits.device)
        if not labels:
            return ids.cpu().numpy(), []
        prob = mask_logits.sigmoid()  # (n, H, W)
        winner = (prob * scores[:, None, None]).argmax(0)  # (H, W)
        own = prob >= 0.5
        won = own & (winner[None] == torch.arange(len(labels), device=winner.device)[:, None, None])
        own_area, won_area = own.flatten(1).sum(1), won.flatten(1).sum(1)
        kept = ((won_area > 0) & (won_area >= self.overlap * own_area)).tolist()
        segment_of_stuff: dict[int, int] = {}
        seg_labels: list[int] = []
        for k, label in enumerate(labels):
            if not kept[k]:
                continue
            is_thing = self.is_thing_map.get(label, True)
            if not is_thing and label in segment_of_stuff:
                seg = segment_of_stuff[label]
            else:
                seg_labels.append(label)
                seg = len(seg_labels)
                if not is_thing:
                    segment_of_stuff[label] = seg
            ids[won[k]] = seg  # won masks are disjoint: one winner per pixel
        areas = torch.bincount(ids.flatten(), minlength=len(seg_labels) + 1).tolist()
        renumber = np.zeros(len(seg_labels) + 1, np.int64)  # small segments -> VOID, the rest 1, 2, ...
        segments = []
        for seg, label in enumerate(seg_labels, start=1):
            if areas[seg] < self.min_area:
                continue
            renumber[seg] = len(segments) + 1
            segments.append({"id": len(segments) + 1, "category_id": label,
                             "isthing": bool(self.is_thing_map.get(label, True)), "area": areas[seg]})
        return renumber[ids.cpu().numpy()], segments
