"""BatchFormer (V1) as a plug-in for any classifier that ends in feature vectors (N, C).

The BatchFormer is a ``TransformerEncoderLayer(C, 4 heads, feed-forward C, dropout 0.5)`` applied along
the batch axis, so each sample's features attend to the other samples of its mini-batch. In training
the batch becomes [x ; bf(x)] with labels [y ; y] and one shared classifier sees both streams: the
classifier must work on features with and without the BatchFormer, which is why the module can be
dropped at test at no cost. The layer and the doubling are those of the detection model
(``models/batchformer.py``).

    encoder = build_batchformer(64)
    feats, labels = batchformer(backbone(images), labels, encoder, model.training)
    loss = F.cross_entropy(classifier(feats), labels)

or, wrapping a backbone and a classifier::

    model = BatchFormerClassifier(backbone, classifier, dim=64)
    logits, labels = model(images, labels)  # training: 2N rows; eval: N rows, no BatchFormer
"""

from __future__ import annotations

from torch import Tensor, nn

from models.batchformer import BF_DROPOUT, BF_HEADS, Layout, batchformer_step, build_batchformer

EVAL_MODES = ("skip", "average")


def batchformer(
    x: Tensor, y: Tensor | None, encoder: nn.Module, is_training: bool, two_stream: bool = True
) -> tuple[Tensor, Tensor | None]:
    """The papers' ``x, y = BatchFormer(x, y, encoder, is_training)`` on features x (N, C), labels y (N,).

    Training, two streams: ([x ; encoder(x)] (2N, C), [y ; y] (2N,)). Training, single stream (the
    RIDE variant): (encoder(x), y). Not training: (x, y) unchanged. y may be None (then None is returned).
    """
    if not is_training:
        return x, y
    x = batchformer_step(encoder, x, Layout.VECTORS, num_images=x.shape[0], two_stream=two_stream,
                         num_streams=1)
    if two_stream and y is not None:
        y = y.repeat(2, *([1] * (y.dim() - 1)))
    return x, y


class BatchFormerClassifier(nn.Module):
    """backbone (images -> (N, C)) + BatchFormer + shared classifier ((N, C) -> (N, K)).

    ``depth`` stacks BatchFormer layers (an nn.TransformerEncoder), ``heads`` and ``dropout`` set the
    layer; ``two_stream=False`` is the single-stream (RIDE-style) variant, where the BatchFormer output
    replaces the batch in training. ``eval_mode="skip"`` (the papers' test) classifies the backbone's
    features alone; ``"average"`` is an ablation that averages the classifier's logits over the two
    streams at test, which makes a test sample's prediction depend on the rest of its test batch.
    """

    def __init__(
        self,
        backbone: nn.Module,
        classifier: nn.Module,
        dim: int,
        depth: int = 1,
        heads: int = BF_HEADS,
        dropout: float = BF_DROPOUT,
        two_stream: bool = True,
        eval_mode: str = "skip",
    ) -> None:
        super().__init__()
        if eval_mode not in EVAL_MODES:
            raise ValueError(
                f"BatchFormerClassifier: eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}"
            )
        if depth < 1:
            raise ValueError(f"BatchFormerClassifier: depth must be at least 1, got {depth}")
        self.backbone = backbone
        self.bf = build_batchformer(dim, depth, nhead=heads, dropout=dropout, dim_name="the feature dim")
        self.classifier = classifier
        self.two_stream = two_stream
        self.eval_mode = eval_mode

    def forward(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Returns (logits, labels): (2N, K) and [y ; y] in two-stream training, else (N, K) and y."""
        feats = self.backbone(images)
        if feats.dim() != 2:
            raise ValueError(f"BatchFormerClassifier: the backbone must return features (N, C), "
                             f"got shape {tuple(feats.shape)}")
        if not self.training and self.eval_mode == "average":
            n = feats.shape[0]
            both = self.classifier(batchformer_step(self.bf, feats, Layout.VECTORS, n, two_stream=True,
                                                            num_streams=1))
            return (both[:n] + both[n:]) / 2, labels
        feats, labels = batchformer(feats, labels, self.bf, self.training, self.two_stream)
        return self.classifier(feats), labels
