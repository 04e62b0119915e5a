"""Command-line flags.

Every flag of the public Deformable DETR ``main.py`` with its default, the BatchFormerV2 flags,
and this codebase's additions. Hyphenated spellings (``--batch-size``) are accepted for every
underscored flag because the BatchFormer README uses them.
"""
import argparse
import math


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that also accepts ``--a-b`` wherever ``--a_b`` is declared."""

    def add_argument(self, *names, **kwargs):
        aliases = [n.replace("_", "-") for n in names if n.startswith("--") and "_" in n]
        return super().add_argument(*names, *aliases, **kwargs)


def _add_optim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lr", default=2e-4, type=float)
    p.add_argument("--lr_backbone_names", default=["backbone.0"], type=str, nargs="+")
    p.add_argument("--lr_backbone", default=2e-5, type=float)
    p.add_argument(
        "--lr_linear_proj_names", default=["reference_points", "sampling_offsets"], type=str, nargs="+"
    )
    p.add_argument("--lr_linear_proj_mult", default=0.1, type=float)
    p.add_argument("--batch_size", default=2, type=int)
    p.add_argument("--weight_decay", default=1e-4, type=float)
    p.add_argument("--epochs", default=50, type=int)
    p.add_argument("--lr_drop", default=40, type=int)
    p.add_argument("--lr_drop_epochs", default=None, type=int, nargs="+")
    p.add_argument("--clip_max_norm", default=0.1, type=float, help="gradient clipping max norm")
    p.add_argument("--sgd", action="store_true")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    # Deformable DETR variants
    p.add_argument("--with_box_refine", default=False, action="store_true")
    p.add_argument("--two_stage", default=False, action="store_true")
    p.add_argument(
        "--frozen_weights", type=str, default=None,
        help="path to a pretrained detector; only the mask head is trained if set",
    )
    # backbone
    p.add_argument("--backbone", default="resnet50", type=str,
                   help="torchvision ResNet: resnet18, resnet34, resnet50 or resnet101")
    p.add_argument("--dilation", action="store_true",
                   help="replace the stride of the last block by a dilation (DC5)")
    p.add_argument("--position_embedding", default="sine", type=str, choices=("sine", "learned"))
    p.add_argument("--position_embedding_scale", default=2 * math.pi, type=float)
    p.add_argument("--num_feature_levels", default=4, type=int)
    p.add_argument("--backbone_weights", default=None, type=str,
                   help="load the backbone's ImageNet weights from this torchvision state-dict file "
                        "instead of downloading them")
    p.add_argument("--no_pretrained_backbone", action="store_true",
                   help="start the backbone from random weights (nothing is downloaded)")
    # transformer
    p.add_argument("--enc_layers", default=6, type=int)
    p.add_argument("--dec_layers", default=6, type=int)
    p.add_argument("--dim_feedforward", default=1024, type=int)
    p.add_argument("--hidden_dim", default=256, type=int)
    p.add_argument("--dropout", default=0.1, type=float)
    p.add_argument("--nheads", default=8, type=int)
    p.add_argument("--num_queries", default=300, type=int)
    p.add_argument("--dec_n_points", default=4, type=int)
    p.add_argument("--enc_n_points", default=4, type=int)
    # segmentation
    p.add_argument("--masks", action="store_true", help="train the segmentation head")
    p.add_argument("--panoptic_threshold", default=0.3, type=float,
                   help="panoptic inference keeps the queries whose best class score is above this")


def _add_batchformer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bf", default=0, type=int,
                   help="BatchFormerV2: 0 off, 1 two-stream training (the published mode)")
    p.add_argument("--insert_idx", default=None, type=int, nargs="+", action="extend",
                   help="encoder layer(s) after which the BatchFormer runs; repeatable")
    p.add_argument("--share_bf", default=1, type=int,
                   help="1: one BatchFormer layer shared by every insert index; 0: one per index")
    p.add_argument("--bt_num_layers", default=1, type=int, help="depth of each BatchFormer")
    p.add_argument("--eval_bf", default=0, type=int, nargs="?", const=1,
                   help="also apply the BatchFormer at inference (single stream)")


def _add_loss_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no_aux_loss", dest="aux_loss", action="store_false",
                   help="disable the auxiliary decoding losses (loss at each layer)")
    # matcher
    p.add_argument("--set_cost_class", default=2, type=float)
    p.add_argument("--set_cost_bbox", default=5, type=float)
    p.add_argument("--set_cost_giou", default=2, type=float)
    # loss coefficients
    p.add_argument("--mask_loss_coef", default=1, type=float)
    p.add_argument("--dice_loss_coef", default=1, type=float)
    p.add_argument("--cls_loss_coef", default=2, type=float)
    p.add_argument("--bbox_loss_coef", default=5, type=float)
    p.add_argument("--giou_loss_coef", default=2, type=float)
    p.add_argument("--focal_alpha", default=0.25, type=float)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    # data
    p.add_argument("--dataset_file", default="coco", help="coco, coco_panoptic, toy or toy_panoptic")
    p.add_argument("--coco_path", default="./data/coco", type=str)
    p.add_argument("--coco_panoptic_path", type=str)
    p.add_argument("--toy_panoptic_root", default=None, type=str,
                   help="cache folder of --dataset_file toy_panoptic (default data/toy_panoptic)")
    p.add_argument("--toy_root", default=None, type=str,
                   help="cache folder of --dataset_file toy (default data/toy; generated if missing)")
    p.add_argument("--remove_difficult", action="store_true")
    # run
    p.add_argument("--output_dir", default="", help="path where to save, empty for no saving")
    p.add_argument("--device", default="cuda", help="device to use for training / testing")
    p.add_argument("--seed", default=42, type=int)
    p.add_argument("--resume", default="", help="resume from checkpoint (path or URL)")
    p.add_argument("--start_epoch", default=0, type=int, metavar="N", help="start epoch")
    p.add_argument("--eval", action="store_true")
    p.add_argument("--num_workers", default=2, type=int)
    p.add_argument("--cache_mode", default=False, action="store_true",
                   help="whether to cache images in memory")
    # run (this codebase's additions)
    p.add_argument("--amp", default=None, nargs="?", const="bf16", choices=("bf16", "fp16"),
                   help="mixed precision: bfloat16 autocast (default when given alone) or float16 with "
                        "gradient scaling")
    p.add_argument("--print_freq", default=10, type=int, help="iterations between progress lines")
    p.add_argument("--print_all_terms", action="store_true",
                   help="progress lines list every loss term of every decoder layer, weighted and unscaled, "
                        "and the iteration and data times (log.txt always holds every term)")
    p.add_argument("--max_iters_per_epoch", default=0, type=int,
                   help="stop each training epoch after this many iterations (0: the whole data set)")
    p.add_argument("--max_eval_iters", default=0, type=int,
                   help="evaluate on the first N batches only (0: the whole validation set)")
    p.add_argument("--eval_every", default=1, type=int,
                   help="evaluate every N epochs during training, and after the last (0: only with --eval)")
    p.add_argument("--coco_eval_backend", default="pycocotools", choices=("pycocotools", "faster"),
                   help="COCOeval implementation: pycocotools, or faster-coco-eval (same stats, ~6x faster)")
    p.add_argument("--find_unused_parameters", action="store_true",
                   help="tell DistributedDataParallel that some parameters may get no gradient (slower; "
                        "needed only for a model changed so that some trainable parameters leave the loss)")
    p.add_argument("--allow_partial_load", action="store_true",
                   help="load a --resume/--frozen_weights checkpoint of another architecture anyway: "
                        "what fits is loaded, the rest stays at its initial values (reported)")


def get_args_parser() -> argparse.ArgumentParser:
    """The parser of ``main.py``; built with ``add_help=False`` so that it can be a parent parser."""
    parser = _Parser("Deformable DETR with BatchFormerV2", add_help=False)
    _add_optim_args(parser)
    _add_model_args(parser)
    _add_batchformer_args(parser)
    _add_loss_args(parser)
    _add_run_args(parser)
    return parser
