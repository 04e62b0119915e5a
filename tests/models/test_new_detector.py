"""The seams a new detector plugs into, proved by one registered from this file: a tiny sequence-first
DETR-like model with DETR's softmax classification, a --bf mode of its own and a mask head that reads the
input projection and two backbone maps. It trains, evaluates, checkpoints and is evaluated again by
test.py, as main.py and test.py run the published detectors, without a line of it outside this file
(docs/architecture.md, "Adding a detector")."""
import argparse
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import main as main_module
import test as test_module
from datasets import toy_panoptic
from models import build_model
from models.backbone import STRIDE4, build_backbone
from models.batchformer import BatchFormerMode, BatchFormerRun, Layout
from models.classification import SoftmaxCrossEntropy
from models.detectors import DETECTORS, Detector, recognise
from models.heads import MLP
from models.segmentation import MaskFeatures, MHAttentionMap
from tests.models.test_segmentation import _targets
from tests.tiny_model import tiny_flags
from util.args import get_args_parser, parse_args
from util.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class TinySequenceFirstDETR(nn.Module):
    """Backbone, a 1x1 projection of its last map, post-norm encoder layers on (HW, B, C) with the
    BatchFormer after the planned ones, one decoder layer over learned queries, class and box heads."""

    def __init__(self, args, num_classes, classification, batchformer):
        super().__init__()
        d = args.hidden_dim
        self.backbone = build_backbone(args)
        self.input_proj = nn.Conv2d(self.backbone.num_channels[-1], d, 1)
        self.batchformer = batchformer
        if batchformer is not None:
            self.bf = batchformer.build(d)
        self.encoder = nn.Module()  # encoder.layers, and encoder.bf with one BatchFormer per position
        layer = nn.TransformerEncoderLayer(d, args.nheads, args.dim_feedforward, 0.0)
        self.encoder.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(args.enc_layers))
        if batchformer is not None:
            batchformer.alias(self.encoder, self.bf)
        self.query_embed = nn.Embedding(args.num_queries, d)
        self.decoder = nn.TransformerDecoderLayer(d, args.nheads, args.dim_feedforward, 0.0)
        self.class_embed = nn.Linear(d, classification.num_logits(num_classes))
        classification.init_head(self.class_embed)
        self.bbox_embed = MLP(d, d, 4, 2)
        self.hidden_dim, self.nheads = d, args.nheads

    def forward(self, samples):
        return self.forward_with_state(samples)[0]

    def forward_with_state(self, samples):
        from util.misc import NestedTensor, nested_tensor_from_tensor_list

        if not isinstance(samples, NestedTensor):
            samples = nested_tensor_from_tensor_list(list(samples))
        features, pos, extra = self.backbone.forward_levels(samples)
        src, mask = features[-1].decompose()
        projected = self.input_proj(src)  # (B, C, H, W)
        b, c, h, w = projected.shape
        x = projected.flatten(2).permute(2, 0, 1)  # (HW, B, C): sequence-first
        p = pos[-1].flatten(2).permute(2, 0, 1)
        padding = mask.flatten(1)  # (B, HW)
        plan = self.batchformer.plan(self.bf, self.training) if self.batchformer is not None else None
        run = BatchFormerRun(plan, Layout.SEQUENCE_FIRST, num_images=b)
        for i, layer in enumerate(self.encoder.layers):
            x = layer(x + p, src_key_padding_mask=padding)
            x, doubled = run.after_layer(i, x)
            if doubled:
                p, padding = torch.cat([p, p], 1), torch.cat([padding, padding])
        tgt = self.query_embed.weight[:, None].repeat(1, x.shape[1], 1)  # (Q, B', C)
        hs = self.decoder(tgt, x, memory_key_padding_mask=padding).transpose(0, 1)  # (B', Q, C)
        out = {"pred_logits": self.class_embed(hs), "pred_boxes": self.bbox_embed(hs).sigmoid(),
               "num_streams": run.num_streams}
        memory = x.permute(1, 2, 0).reshape(x.shape[1], c, h, w)
        fpn = {8: features[0].tensors, 16: features[1].tensors, 4: extra[STRIDE4].tensors} if extra else {}
        return out, MaskFeatures(hs, memory, mask, fpn, run.num_streams, projected=projected)

    def mask_features(self, state):
        return state


class TinyMaskHead(nn.Module):
    """DETR's form in miniature: [projection ; attention maps] per query, then stride-16 and stride-4
    backbone maps added through adapters."""

    fpn_strides = (16, 4)

    def __init__(self, hidden_dim, num_heads, c16, c4):
        super().__init__()
        self.lay1 = nn.Conv2d(hidden_dim + num_heads, 8, 3, padding=1)
        self.adapter16, self.adapter4 = nn.Conv2d(c16, 8, 1), nn.Conv2d(c4, 8, 1)
        self.out_lay = nn.Conv2d(8, 1, 3, padding=1)

    def image_terms(self, memory, mask, fpn, projected):
        return projected, self.adapter16(fpn[0]), self.adapter4(fpn[1])

    def query_masks(self, attn, projected, adapted16, adapted4):
        b, q = attn.shape[:2]
        x = torch.cat([projected[:, None].expand(-1, q, -1, -1, -1), attn], 2).flatten(0, 1)
        x = F.relu(self.lay1(x))
        x = F.interpolate(x, size=adapted16.shape[-2:]) + adapted16.repeat_interleave(q, 0)
        x = F.interpolate(x, size=adapted4.shape[-2:]) + adapted4.repeat_interleave(q, 0)
        return self.out_lay(x).view(b, q, *adapted4.shape[-2:])


def build(args, *, num_classes, classification, batchformer):
    return TinySequenceFirstDETR(args, num_classes, classification, batchformer)


def build_mask_head(model):
    shapes = model.backbone.output_shape()
    channels = {shape.stride: shape.channels for name, shape in shapes.items() if name != "2"}
    return (MHAttentionMap(model.hidden_dim, model.hidden_dim, model.nheads, softmax_over_heads=True),
            TinyMaskHead(model.hidden_dim, model.nheads, channels[16], channels[4]))


TINY_DETECTOR = Detector(
    "a tiny sequence-first DETR (test)",
    module=__name__,
    classification=SoftmaxCrossEntropy,
    bf_modes={5: BatchFormerMode("two streams after every encoder layer from --start_idx", two_stream=True,
                                 from_start_idx=True)},
    signature=("decoder.multihead_attn.in_proj_weight",),
    defaults={"num_queries": 6, "eos_coef": 0.2, "panoptic_threshold": 0.0, "lr_linear_proj_names": []},
    refuses={"two_stage": "the tiny detector has no proposals"},
)

FLAGS = tiny_flags("--meta_arch", "tiny_detr", "--dataset_file", "toy_panoptic", "--enc_layers", "2",
                   "--num_workers", "0", "--masks", "--bf", "5", "--share_bf", "0", "--print_freq", "1")


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(DETECTORS, "tiny_detr", TINY_DETECTOR)


def _parse(*argv):
    return parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), [*FLAGS, *argv])


def test_the_registry_builds_it_with_its_classification_defaults_and_batchformer(registered):
    args = _parse()
    assert (args.num_queries, args.eos_coef, args.panoptic_threshold) == (10, 0.2, 0.0)  # typed, its defaults
    model, criterion, post = build_model(args)
    assert criterion.classification is post["bbox"].classification is post["panoptic"].classification
    assert isinstance(criterion.classification, SoftmaxCrossEntropy)
    assert criterion.classification.eos_coef == 0.2
    assert model.detr.class_embed.out_features == 21  # 20 toy classes and "no object"
    assert list(model.detr.bf) == ["0", "1"]  # --bf 5: after every layer
    assert model.detr.encoder.bf is model.detr.bf
    model.train()
    out = model([torch.rand(3, 64, 80), torch.rand(3, 56, 72)])
    assert out["num_streams"] == 2 and out["pred_logits"].shape == (4, 10, 21)
    assert out["pred_masks"].shape == (4, 10, 16, 20)
    losses = criterion(out, _targets())
    sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses).backward()
    for part in (model.detr.bf, model.mask_head.lay1, model.bbox_attention):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    with pytest.raises(SystemExit):
        main_module.cli([*FLAGS, "--two_stage"])  # its refusal, in one line


def test_it_trains_evaluates_and_test_py_rebuilds_it_from_the_checkpoint(registered, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setitem(toy_panoptic.DEFAULT_SIZES, "num_train", 4)
    monkeypatch.setitem(toy_panoptic.DEFAULT_SIZES, "num_val", 2)
    data, out = tmp_path / "toy_panoptic", tmp_path / "run"
    run = ["--toy_panoptic_root", str(data), "--output_dir", str(out), "--epochs", "1",
           "--max_iters_per_epoch", "2", "--max_eval_iters", "1"]
    main_module.cli([*FLAGS, *run])
    stats = json.loads((out / "eval_stats.json").read_text())
    assert len(stats["coco_eval_bbox"]) == 12 and len(stats["coco_eval_masks"]) == 12 and "PQ_all" in stats
    checkpoint = load_checkpoint(str(out / "checkpoint.pth"))
    assert checkpoint["args"].meta_arch == "tiny_detr" and recognise(checkpoint["model"]) == "tiny_detr"
    # test.py takes the detector and its flags from the checkpoint; without args, from its keys.
    del checkpoint["args"]
    torch.save(checkpoint, tmp_path / "bare.pth")
    run = ["--device", "cpu", "--toy_panoptic_root", str(data), "--max_eval_iters", "1", "--num_workers", "0",
           "--output_dir", str(tmp_path / "eval")]
    # The bare file says nothing of the model but its keys: the other model flags are typed.
    typed = tiny_flags("--enc_layers", "2", "--masks", "--bf", "5", "--share_bf", "0", "--dataset_file",
                       "toy_panoptic")
    for path, given in ((out / "checkpoint.pth", []), (tmp_path / "bare.pth", typed)):
        test_module.cli([*given, "--resume", str(path), *run])
        assert json.loads((tmp_path / "eval" / "eval_stats.json").read_text()).keys() == stats.keys()
    said = capsys.readouterr().out
    assert "bare.pth records no --meta_arch; its keys are those of --meta_arch tiny_detr" in said
