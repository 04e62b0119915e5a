"""BatchFormerV2: a transformer layer that attends across the images of a mini-batch (SPEC section 5).

The layer is a plain ``nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=d_model,
dropout=0.5)`` (an ``nn.TransformerEncoder`` of them when deeper), so published checkpoints load.
It runs inside the deformable encoder after the layers listed by ``--insert_idx``.

Two-stream training: at the first insert index the batch x (B, L, C) becomes [x ; bf(x)] (2B, L, C);
at later indices only the second stream goes through the layer. Both streams share every other
weight, so the layer works as a training-time regulariser: at inference it is skipped (stream 0 is
plain Deformable DETR) unless ``--eval_bf`` applies it to the single stream.

The same layer, doubling and parameter split serve the plug-in beyond detection
(``models/batchformer_plugin.py`` on feature vectors (N, C), ``models/batchformer_vit.py`` in a
vision transformer), so that there is one implementation of each.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

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


def attend_across_batch(bf: nn.Module, x: Tensor) -> Tensor:
    """(B, L, C) -> (B, L, C): every position l attends to position l of the other images.
    Feature vectors (N, C) -> (N, C): every sample attends to the others.

    A sequence-first TransformerEncoderLayer reads (S, N, E); (B, L, C) read that way makes the
    images the sequence and the positions the batch, with no copy.
    """
    if x.dim() == 2:
        return bf(x.unsqueeze(1)).squeeze(1)
    return bf(x)


def batchformer_step(bf: nn.Module, x: Tensor, num_images: int, two_stream: bool) -> Tensor:
    """Apply one insert index to x, (B, L, C) or (B, C); (2B, ...) once two-streamed.

    Single stream: bf(x). Two streams: [x ; bf(x)] at the first index (x has ``num_images`` rows),
    then [x0 ; bf(x1)] (the second stream only) at later ones.
    """
    if not two_stream:
        return attend_across_batch(bf, x)
    if x.shape[0] == num_images:
        return torch.cat([x, attend_across_batch(bf, x)], dim=0)
    return torch.cat([x[:num_images], attend_across_batch(bf, x[num_images:])], dim=0)


class BatchFormerPlan:
    """Which BatchFormer runs after which encoder layer in one forward pass (no parameters).

    ``layers`` maps an encoder layer index to its BatchFormer module; ``two_stream`` selects the
    training mode.
    """

    def __init__(self, layers: Mapping[int, nn.Module], two_stream: bool) -> None:
        self.layers = dict(layers)
        self.two_stream = two_stream


def resolve_insert_indices(
    bf: int, insert_idx: list[int] | None, enc_layers: int, share_bf: int = 1, bt_num_layers: int = 1
) -> list[int]:
    """Validate the BatchFormerV2 flags; return the sorted, de-duplicated insert indices.

    ``--bf 1`` without ``--insert_idx`` inserts after encoder layer 0 (the published setting),
    with a notice; with ``--bf 0`` the result is [].
    """
    if bf not in (0, 1):
        raise ValueError(f"--bf must be 0 (off) or 1 (two-stream BatchFormerV2), got {bf}")
    if share_bf not in (0, 1):
        raise ValueError(f"--share_bf must be 0 or 1, got {share_bf}")
    if bt_num_layers < 1:
        raise ValueError(f"--bt_num_layers must be at least 1, got {bt_num_layers}")
    if bf == 0:
        return []
    if not insert_idx:
        print("BatchFormerV2: --bf 1 without --insert_idx; inserting after encoder layer 0 (--insert_idx 0)")
        return [0]
    bad = [i for i in insert_idx if not 0 <= i < enc_layers]
    if bad:
        raise ValueError(
            f"--insert_idx must be encoder layer indices in [0, {enc_layers}) "
            f"(--enc_layers {enc_layers}), got {bad}"
        )
    return sorted(set(insert_idx))


def is_batchformer_parameter(name: str) -> bool:
    """Whether a parameter (or state-dict key) belongs to a BatchFormer: a path component named ``bf``
    (``transformer.bf.*``, ``transformer.encoder.bf.N.*``; ``bf.*`` and ``bf.layers.N.*`` in the plug-in).
    """
    return "bf" in name.split(".")


def batchformer_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    bf_lr_mult: float = 1.0,
    bf_weight_decay: float | None = None,
) -> list[dict]:
    """Two optimizer groups: every other trainable parameter at (lr, weight_decay), then the
    BatchFormer's at (lr * bf_lr_mult, bf_weight_decay or weight_decay).

    A separate group lets the BatchFormer, which only ever sees training batches, be tuned or frozen
    apart from the network it regularises. A shared layer registered twice is listed once.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rest = [p for n, p in named if not is_batchformer_parameter(n)]
    bf = [p for n, p in named if is_batchformer_parameter(n)]
    return [
        {"params": rest, "lr": lr, "weight_decay": weight_decay},
        {"params": bf, "lr": lr * bf_lr_mult,
         "weight_decay": weight_decay if bf_weight_decay is None else bf_weight_decay},
    ]
