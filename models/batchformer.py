"""BatchFormerV2: a layer that attends across the images of a mini-batch (docs/design/two_streams.md).

The layer is a plain ``nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=d_model,
dropout=0.5)`` (an ``nn.TransformerEncoder`` of them when deeper), so published checkpoints load.
It runs inside a detector's encoder after the layers its ``BatchFormerConfig`` lists (``positions``,
resolved per detector from ``--bf`` and ``--insert_idx``): the encoder hands its state in the layout it
works in (``Layout``: batch-first for Deformable DETR, sequence-first for DETR) and ``BatchFormerRun``
applies the steps and counts the streams.

Two-stream training: at the first insert index the batch x (B, L, C) becomes [x ; bf(x)] (2B, L, C);
at later indices only the second stream goes through the layer. Both streams share every other
weight, so the layer works as a training-time regulariser: at inference it is skipped (stream 0 is
plain Deformable DETR) unless ``--eval_bf`` applies it to the single stream. ``--bf 7`` is the public
single-stream mode: in training bf(x) replaces x (no second stream); at test the layer is skipped.

Scope (``--bf_scope``): ``device`` (published) attends across the images of this process's batch;
``global`` lets each rank's images (the queries) attend over the keys and values of every image on
every rank (``AcrossRanks``), each rank's batch padded to the largest image size of the job
(``pad_to_common_size``) so that token l is the same place in every image: N processes then compute
what one process computes over the concatenated batch.

The same layer, doubling and parameter split serve the plug-in beyond detection
(``models/batchformer_plugin.py`` on feature vectors (N, C), ``models/batchformer_vit.py`` in a
vision transformer), so that there is one implementation of each.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.activation_checkpoint import maybe_checkpointed
from models.param_groups import is_batchformer_parameter, param_groups  # noqa: F401 (the name rule, public here)
from util.dist import all_gather_rows, get_world_size, max_over_ranks
from util.misc import NestedTensor, nested_tensor_from_tensor_list

BF_HEADS = 4
BF_DROPOUT = 0.5


def build_batchformer(
    d_model: int,
    num_layers: int = 1,
    nhead: int = BF_HEADS,
    dropout: float = BF_DROPOUT,
    dim_name: str = "--hidden_dim",
) -> nn.Module:
    """One BatchFormer: a TransformerEncoderLayer(d_model, nhead, d_model, dropout), or an
    nn.TransformerEncoder of ``num_layers`` of them. ``dim_name`` names d_model in the error."""
    if d_model % nhead != 0:
        raise ValueError(
            f"BatchFormer uses {nhead} heads: {dim_name} must be divisible by {nhead}, got {d_model}"
        )
    layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=d_model, dropout=dropout)
    if num_layers == 1:
        return layer
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)


class Layout(enum.Enum):
    """How the tensor an encoder hands the BatchFormer holds its images: stated by the caller, never
    inferred from the shape (a batch of 2 images of 2 tokens reads the same either way)."""

    BATCH_FIRST = "(B, L, C)"  # Deformable DETR's encoder, the vision transformer
    SEQUENCE_FIRST = "(L, B, C)"  # DETR's and Conditional DETR's encoders (nn.MultiheadAttention's default)
    VECTORS = "(N, C)"  # one feature vector per sample: the plug-in beyond detection

    @property
    def batch_dim(self) -> int:
        """The dimension that indexes the images (where the two streams are concatenated)."""
        return 1 if self is Layout.SEQUENCE_FIRST else 0


def attend_across_batch(bf: nn.Module, x: Tensor, layout: Layout) -> Tensor:
    """x -> the same shape: every position l attends to position l of the other images (every sample to
    the others for VECTORS).

    The BatchFormer is a sequence-first layer: it reads (S, N, E). (B, L, C) read that way makes the
    images the sequence and the positions the batch, with no copy; (L, B, C) is transposed to it (a
    view) and back; (N, C) becomes a sequence of N samples of a batch of one.
    """
    if layout is Layout.VECTORS:
        return bf(x.unsqueeze(1)).squeeze(1)
    if layout is Layout.SEQUENCE_FIRST:
        return bf(x.transpose(0, 1)).transpose(0, 1)
    return bf(x)


def batchformer_step(bf: nn.Module, x: Tensor, layout: Layout, num_images: int, two_stream: bool,
                     num_streams: int) -> Tensor:
    """Apply one insert position to x (in ``layout``), whose image dimension holds ``num_streams`` streams
    of ``num_images`` images.

    Single stream: bf(x). Two streams: [x ; bf(x)] at the first position (``num_streams`` 1), then
    [x0 ; bf(x1)] (the second stream only) at later ones (``num_streams`` 2), concatenated along the
    image dimension. The caller tracks the streams: the row count is not asked.
    """
    if not two_stream:
        return attend_across_batch(bf, x, layout)
    if num_streams not in (1, 2):
        raise ValueError(f"batchformer_step: num_streams must be 1 or 2, got {num_streams}")
    dim = layout.batch_dim
    if num_streams == 1:
        return torch.cat([x, attend_across_batch(bf, x, layout)], dim=dim)
    second = x.narrow(dim, num_images, x.shape[dim] - num_images)
    return torch.cat([x.narrow(dim, 0, num_images), attend_across_batch(bf, second, layout)], dim=dim)


class AcrossRanks:
    """A BatchFormer whose queries are this rank's images and whose keys and values are every rank's.

    Called like the module it wraps, with the images as its sequence, (B_r, L, C) (``attend_across_batch``
    puts every layout so): position l of each of the B_r local
    images attends to position l of all sum_r B_r images of the job, gathered (differentiably) before
    each layer. Attention is per query and the rest of the layer per token, so every rank's rows equal
    the rows the plain module gives for the concatenated batch. With one process it is the module.
    """

    def __init__(self, bf: nn.Module) -> None:
        self.bf = bf

    def __call__(self, x: Tensor) -> Tensor:
        if get_world_size() == 1:
            return self.bf(x)
        encoder = self.bf if isinstance(self.bf, nn.TransformerEncoder) else None
        for layer in encoder.layers if encoder is not None else [self.bf]:
            x = _layer_over_every_rank(layer, x)
        if encoder is not None and encoder.norm is not None:
            x = encoder.norm(x)
        return x


def _layer_over_every_rank(layer: nn.TransformerEncoderLayer, x: Tensor) -> Tensor:
    """``layer`` (post-norm, as ``build_batchformer`` makes it) on local queries x (B_r, L, C) with the
    gathered (sum_r B_r, L, C) as keys and values. The raw input is gathered, not the projected keys
    and values: C numbers per token instead of 2C."""
    if layer.norm_first:
        raise ValueError("AcrossRanks: only post-norm BatchFormer layers (norm_first=False) are supported")
    every = all_gather_rows(x)
    attended = layer.self_attn(x, every, every, need_weights=False)[0]
    x = layer.norm1(x + layer.dropout1(attended))
    return layer.norm2(x + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))))


def pad_to_common_size(samples: NestedTensor) -> NestedTensor:
    """Pad a batch (B, 3, H, W) and its mask (B, H, W) bottom/right to the largest H and W of every rank.

    With ``--bf_scope global`` the BatchFormer pairs token l of images from different ranks: the
    flattened feature maps must have the same shape and token l the same place everywhere. The padding
    is what one process gives the concatenated batch, so the per-image results (the input projections'
    GroupNorm, for one, sees the padding) match it too. One small all-reduce; a no-op with one process.
    """
    h, w = samples.tensors.shape[-2:]
    height, width = max_over_ranks((h, w))
    if (height, width) == (h, w):
        return samples
    pad = (0, width - w, 0, height - h)
    mask = samples.mask
    if mask is None:
        mask = torch.zeros((samples.tensors.shape[0], h, w), dtype=torch.bool, device=samples.tensors.device)
    return NestedTensor(F.pad(samples.tensors, pad), F.pad(mask, pad, value=True))


def detector_input(samples: NestedTensor | list[Tensor], spans_ranks: bool) -> NestedTensor:
    """What a detector's forward reads: ``samples`` as a padded batch (a list of (3, H, W) images padded
    bottom/right), padded further to every rank's common size when its BatchFormer attends across ranks
    (``BatchFormerConfig.spans_ranks``)."""
    if not isinstance(samples, NestedTensor):
        samples = nested_tensor_from_tensor_list(list(samples))
    return pad_to_common_size(samples) if spans_ranks else samples


@dataclass(frozen=True)
class BatchFormerConfig:
    """A detector's BatchFormerV2, resolved from its flags (``models.detectors`` says what each --bf value
    means for each detector); a transformer holds one, or None without a BatchFormer.

    ``positions``: the sorted encoder layers after which it runs; ``two_stream``: training makes
    [x ; bf(x)] (else bf(x) replaces x); ``share``: one layer for every position, else one per position;
    ``num_layers``: its depth (--bt_num_layers); ``eval_bf``: it also runs at inference, single stream;
    ``scope``: "device" or "global" (every rank's images, --bf_scope); ``use_checkpoint``: its steps are
    recomputed in the backward pass (not across ranks, where that would gather every rank's images again).
    """

    positions: tuple[int, ...]
    two_stream: bool = True
    share: bool = True
    num_layers: int = 1
    eval_bf: bool = False
    scope: str = "device"
    use_checkpoint: bool = False

    def build(self, d_model: int) -> nn.Module:
        """The layer(s), for a transformer to register as ``bf`` before its encoder (the published state
        dicts list ``transformer.bf.*`` first): one module when shared, else a ModuleDict by position
        (keys ``transformer.bf.N.*``), which ``alias`` also registers under the encoder."""
        if self.share:
            return build_batchformer(d_model, self.num_layers)
        return nn.ModuleDict({str(i): build_batchformer(d_model, self.num_layers) for i in self.positions})

    def alias(self, encoder: nn.Module, bf: nn.Module) -> None:
        """Register the per-position layers as ``encoder.bf`` too (the published keys
        ``transformer.encoder.bf.N.*``, the same tensors); a shared layer has no second name."""
        if not self.share:
            encoder.bf = bf

    def plan(self, bf: nn.Module, training: bool) -> BatchFormerPlan | None:
        """The BatchFormers one pass runs (``bf`` as ``build`` made it): two-stream training, single-stream
        training, or single stream at inference with ``eval_bf``; None when the pass skips it."""
        if not (training or self.eval_bf):
            return None
        layers = {i: bf if self.share else bf[str(i)] for i in self.positions}
        return BatchFormerPlan(layers, two_stream=training and self.two_stream,
                               across_ranks=self.scope == "global", use_checkpoint=self.use_checkpoint)

    def spans_ranks(self, training: bool) -> bool:
        """Whether a pass attends across every rank's images: the images must then be padded alike on every
        rank (``pad_to_common_size``) before the backbone."""
        return (training or self.eval_bf) and self.scope == "global"


class BatchFormerPlan:
    """Which BatchFormer runs after which encoder layer in one forward pass (no parameters).

    ``layers`` maps an encoder layer index to its BatchFormer (a module, or ``AcrossRanks`` of one);
    ``two_stream`` selects the training mode; ``across_ranks`` says whether the layers attend across
    every rank's images (the batch must then be padded with ``pad_to_common_size``); ``use_checkpoint``
    recomputes each step in the backward pass (never across ranks).
    """

    def __init__(self, layers: Mapping[int, nn.Module], two_stream: bool, across_ranks: bool = False,
                 use_checkpoint: bool = False) -> None:
        self.layers = {i: AcrossRanks(m) if across_ranks else m for i, m in layers.items()}
        self.two_stream = two_stream
        self.across_ranks = across_ranks
        self.use_checkpoint = use_checkpoint and not across_ranks


class BatchFormerRun:
    """One encoder pass through a plan (or None: nothing runs): the BatchFormer after each planned layer,
    and the stream count.

    The encoder calls ``after_layer(i, x)`` after each of its layers, x in its ``layout``. When that call
    doubles the batch (the first position in two-stream training) the encoder duplicates its per-image
    inputs (position encodings, padding masks, reference points) along their image dimension; every later
    step then holds ``num_streams`` = 2 streams of ``num_images`` images.
    """

    def __init__(self, plan: BatchFormerPlan | None, layout: Layout, num_images: int) -> None:
        self.plan = plan
        self.layout = layout
        self.num_images = num_images
        self.num_streams = 1

    def after_layer(self, index: int, x: Tensor) -> tuple[Tensor, bool]:
        """x after encoder layer ``index``, and whether this call made the second stream."""
        bf = self.plan.layers.get(index) if self.plan is not None else None
        if bf is None:
            return x, False
        x = maybe_checkpointed(self.plan.use_checkpoint, batchformer_step, bf, x, self.layout,
                               self.num_images, self.plan.two_stream, self.num_streams)
        doubled = self.plan.two_stream and self.num_streams == 1
        if doubled:
            self.num_streams = 2
        return x, doubled


@dataclass(frozen=True)
class BatchFormerMode:
    """What one ``--bf`` value means for a detector (``models.detectors`` lists each detector's).

    ``two_stream``: training makes [x ; bf(x)] (else bf(x) replaces x). Where it runs: after encoder layer
    ``at`` (negative counts from the end: -1 is after the whole encoder) when given, else after each
    ``--insert_idx`` layer; without ``--insert_idx``, after every layer from ``--start_idx`` when
    ``from_start_idx`` (DETR's --bf 3), else after layer 0 with a notice (Deformable DETR's --bf 1 and 7).
    """

    description: str
    two_stream: bool
    at: int | None = None
    from_start_idx: bool = False


def resolve_batchformer(args, modes: Mapping[int, BatchFormerMode],
                        detector: str) -> tuple[BatchFormerConfig | None, str | None]:
    """The BatchFormerV2 of ``args`` for a detector whose --bf values are ``modes``, and a notice to print
    (or None); (None, None) with --bf 0. The flags' one check: a ValueError names the flag at fault."""
    if args.share_bf not in (0, 1):
        raise ValueError(f"--share_bf must be 0 or 1, got {args.share_bf}")
    if args.eval_bf not in (0, 1):
        raise ValueError(f"--eval_bf must be 0 or 1, got {args.eval_bf}")
    if args.bt_num_layers < 1:
        raise ValueError(f"--bt_num_layers must be at least 1, got {args.bt_num_layers}")
    if args.bf == 0:
        return None, None
    mode = modes.get(args.bf)
    if mode is None:
        choices = "; ".join(f"{value} {m.description}" for value, m in modes.items())
        raise ValueError(f"--bf must be 0 (off) or a mode of --meta_arch {detector} ({choices}), "
                         f"got {args.bf}")
    if args.bf_scope == "global" and args.masks:
        # The mask loss pads each process's target masks to its own largest image, while the predicted
        # masks cover the job's largest: the two would be compared out of register.
        raise ValueError("--bf_scope global does not support --masks (the mask loss pads targets per "
                         "process)")
    positions, notice = _positions(args, mode)
    config = BatchFormerConfig(positions, two_stream=mode.two_stream, share=bool(args.share_bf),
                               num_layers=args.bt_num_layers, eval_bf=bool(args.eval_bf), scope=args.bf_scope,
                               use_checkpoint=bool(args.use_checkpoint))
    return config, notice


def _positions(args, mode: BatchFormerMode) -> tuple[tuple[int, ...], str | None]:
    enc_layers = args.enc_layers
    if mode.at is not None:
        if args.insert_idx:
            raise ValueError(f"--insert_idx does not apply to --bf {args.bf} ({mode.description})")
        at = mode.at % enc_layers if mode.at < 0 else mode.at
        if at >= enc_layers:
            raise ValueError(f"--bf {args.bf} ({mode.description}) needs --enc_layers above {at}, "
                             f"got {enc_layers}")
        return (at,), None
    if args.insert_idx:
        bad = [i for i in args.insert_idx if not 0 <= i < enc_layers]
        if bad:
            raise ValueError(f"--insert_idx must be encoder layer indices in [0, {enc_layers}) "
                             f"(--enc_layers {enc_layers}), got {bad}")
        return tuple(sorted(set(args.insert_idx))), None
    if mode.from_start_idx:
        if not 0 <= args.start_idx < enc_layers:
            raise ValueError(f"--start_idx must be an encoder layer index in [0, {enc_layers}) "
                             f"(--enc_layers {enc_layers}), got {args.start_idx}")
        return tuple(range(args.start_idx, enc_layers)), None
    return (0,), (f"BatchFormerV2: --bf {args.bf} without --insert_idx; inserting after encoder layer 0 "
                  "(--insert_idx 0)")


def batchformer_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    bf_lr_mult: float = 1.0,
    bf_weight_decay: float | None = None,
) -> list[dict]:
    """Two optimizer groups: every other trainable parameter at (lr, weight_decay), then the
    BatchFormer's at (lr * bf_lr_mult, bf_weight_decay or weight_decay) (``models.param_groups``).

    A separate group lets the BatchFormer, which only ever sees training batches, be tuned or frozen
    apart from the network it regularises. A shared layer registered twice is listed once.
    """
    return param_groups(model, lr, weight_decay=weight_decay, bf_lr_mult=bf_lr_mult,
                        bf_weight_decay=weight_decay if bf_weight_decay is None else bf_weight_decay)
