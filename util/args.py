"""Command-line flags.

Every flag of the public Deformable DETR ``main.py`` with its default, the BatchFormerV2 flags,
and this codebase's additions. Hyphenated spellings (``--batch-size``) are accepted for every
underscored flag because the BatchFormer README uses them.
"""
import argparse
import copy
import functools
import importlib.util
import math
import os
import sys
import urllib.parse
from collections.abc import Collection
from pathlib import Path

from util.hf.folder import is_hf_folder

# --meta_arch's default: the public Deformable DETR's flags are the parser's defaults.
DEFAULT_META_ARCH = "deformable_detr"
BF_SCOPES = ("device", "global")  # --bf_scope
# What --resume and --frozen_weights fetch rather than read from disk (util.checkpoint downloads them).
_URL_SCHEMES = ("http", "https", "ftp", "s3", "file")


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
    from models.backbone_catalog import BACKBONES
    from models.detectors import DETECTORS

    detectors = "; ".join(f"{name}: {d.description}" for name, d in DETECTORS.items())
    p.add_argument("--meta_arch", default=DEFAULT_META_ARCH, choices=tuple(DETECTORS),
                   help=f"the detector; the other flags' defaults become its public repository's (a flag "
                        f"given here wins): {detectors}")
    # Deformable DETR variants
    p.add_argument("--with_box_refine", default=False, action="store_true")
    p.add_argument("--two_stage", default=False, action="store_true")
    p.add_argument(
        "--frozen_weights", type=str, default=None,
        help="path to a pretrained detector; only the mask head is trained if set",
    )
    # backbone
    p.add_argument("--backbone", default="resnet50", type=str,
                   help="a torchvision ResNet: " + ", ".join(BACKBONES))
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
    p.add_argument("--pre_norm", action="store_true",
                   help="DETR family: layer norm before each attention and FFN block instead of after")
    p.add_argument("--drop_path", default=0.0, type=float,
                   help="accepted for the public BatchFormerV2 command lines; it changes nothing "
                        "(nor did it there)")
    p.add_argument("--use_checkpoint", action="store_true",
                   help="recompute the encoder layers, the BatchFormer and the decoder layers in the "
                        "backward pass instead of storing their activations: less memory, more time, the "
                        "same losses and gradients")
    # segmentation
    p.add_argument("--masks", action="store_true", help="train the segmentation head")
    p.add_argument("--panoptic_threshold", default=0.3, type=float,
                   help="panoptic inference keeps the queries whose best class score is above this")


def _add_batchformer_args(p: argparse.ArgumentParser) -> None:
    from models.detectors import DETECTORS

    modes = "; ".join(f"{name}: " + ", ".join(f"{value} {m.description}" for value, m in d.bf_modes.items())
                      for name, d in DETECTORS.items())
    p.add_argument("--bf", default=0, type=int,
                   help=f"BatchFormerV2 mode, 0 off; the others per --meta_arch ({modes}). It is skipped at "
                        "test unless --eval_bf")
    p.add_argument("--insert_idx", default=None, type=int, nargs="+", action="extend",
                   help="encoder layer(s) after which the BatchFormer runs; repeatable")
    p.add_argument("--start_idx", default=0, type=int,
                   help="DETR family, --bf 3 without --insert_idx: the BatchFormer runs after every encoder "
                        "layer from this one")
    p.add_argument("--share_bf", default=1, type=int,
                   help="1: one BatchFormer layer shared by every insert index; 0: one per index")
    p.add_argument("--bt_num_layers", default=1, type=int, help="depth of each BatchFormer")
    p.add_argument("--eval_bf", default=0, type=int, nargs="?", const=1,
                   help="also apply the BatchFormer at inference (single stream)")
    p.add_argument("--bf_scope", default="device", choices=BF_SCOPES,
                   help="images the BatchFormer attends across: those of each process's batch (device, the "
                        "published behaviour) or those of every process (global; one all-gather of the "
                        "encoder state per insert index)")
    p.add_argument("--bf_lr", default=1.0, type=float,
                   help="multiplier of --lr for the BatchFormer's parameters")
    p.add_argument("--bf_weight_decay", "--bt_decay", default=None, type=float,
                   help="weight decay of the BatchFormer's parameters (default: --weight_decay); --bt_decay "
                        "is the public BatchFormer DETR code's name")


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
    p.add_argument("--eos_coef", default=0.1, type=float,
                   help="DETR: weight of the no-object class in the classification loss")
    p.add_argument("--focal_alpha", default=0.25, type=float,
                   help="alpha of the sigmoid focal classification loss; the matcher's focal cost keeps the "
                        "published 0.25 whatever this says, as in the public code")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    # data
    p.add_argument("--dataset_file", default="coco",
                   help="a data set of datasets.DATASET_FILES: coco, coco_panoptic, toy, toy_panoptic, ...")
    p.add_argument("--coco_path", default="./data/coco", type=str,
                   help="a folder in the COCO layout (train2017/, val2017/, annotations/instances_*.json) or "
                        "as annotation tools export (train/, valid/, each with _annotations.coco.json)")
    p.add_argument("--train_json", default=None, type=str,
                   help="COCO-format annotation file of the training split (instead of --coco_path)")
    p.add_argument("--train_images", default=None, type=str,
                   help="folder the file_name entries of --train_json are relative to")
    p.add_argument("--val_json", default=None, type=str,
                   help="COCO-format annotation file of the validation split (instead of --coco_path)")
    p.add_argument("--val_images", default=None, type=str,
                   help="folder the file_name entries of --val_json are relative to")
    p.add_argument("--image_scale", default=1.0, type=float,
                   help="multiplies every image size of the data set's resize recipe, in training and "
                        "evaluation (COCO's: shorter side 480-800, longer at most 1333, 800 at evaluation; "
                        "the toy sets': 128-192, 320, 160): e.g. 0.5 for small images or a faster run; "
                        "recorded in checkpoints, which test.py and tools/predict.py resize by")
    p.add_argument("--max_image_pixels", default=None, type=int,
                   help="Pillow's decompression-bomb limit for the data set's images: it warns above "
                        "this many pixels and refuses twice as many (default: Pillow's, about 89 million; "
                        "0: no limit)")
    p.add_argument("--coco_panoptic_path", type=str)
    p.add_argument("--toy_panoptic_root", default=None, type=str,
                   help="cache folder of --dataset_file toy_panoptic (default data/toy_panoptic)")
    p.add_argument("--toy_root", default=None, type=str,
                   help="cache folder of --dataset_file toy (default data/toy; generated if missing)")
    p.add_argument("--num_classes", default=None, type=int,
                   help="classifier width (labels are category ids, so at least the largest id + 1); "
                        "default: the data set's (for coco the annotation file's largest category id + 1, "
                        "but 91 for --coco_path in the COCO layout; 250 for coco_panoptic, 20 for toy)")
    p.add_argument("--remove_difficult", action="store_true",
                   help="accepted for the public command lines; it changes nothing (nor did it there)")
    # run
    p.add_argument("--output_dir", default="", help="path where to save, empty for no saving")
    p.add_argument("--device", default="cuda", help="device to use for training / testing")
    p.add_argument("--seed", default=42, type=int)
    p.add_argument("--resume", default="", help="resume from checkpoint (path or URL)")
    p.add_argument("--finetune", default=None, metavar="CKPT",
                   help="start a new run (epoch 0, fresh optimizer) from a trained detector (file, URL or "
                        "Hugging Face folder) on this data set's classes: what fits loads, the "
                        "classification heads start afresh (util/finetune.py)")
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
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the training scalars (losses, lr, grad norm, COCO stats, times) for "
                        "TensorBoard to OUTPUT_DIR/tensorboard (log.txt stays the record)")
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


@functools.lru_cache(maxsize=1)
def _parser_defaults() -> dict:
    return vars(get_args_parser().parse_args([]))


def detector_defaults(meta_arch: str) -> dict:
    """The flags whose defaults differ for ``--meta_arch`` (``models.detectors``): its public repository's."""
    from models.detectors import detector

    return copy.deepcopy(dict(detector(meta_arch).defaults))


def flag_defaults(meta_arch: str = DEFAULT_META_ARCH) -> dict:
    """Every flag's default for the detector ``meta_arch``."""
    return {**copy.deepcopy(_parser_defaults()), **detector_defaults(meta_arch), "meta_arch": meta_arch}


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the defaults of the detector ``--meta_arch`` names: a second parse
    once the detector is known, so that a flag typed on the command line still wins."""
    args = parser.parse_args(argv)
    own = detector_defaults(args.meta_arch)
    if not own:
        return args
    parser.set_defaults(**own)
    return parser.parse_args(argv)


def switch_detector(args: argparse.Namespace, meta_arch: str, keep: Collection[str] = ()) -> None:
    """Make ``args`` (parsed for ``args.meta_arch``) flags of ``meta_arch``: every flag either detector sets
    a default of takes the new one's, except those in ``keep`` (the ones typed on the command line)."""
    new = flag_defaults(meta_arch)
    for flag in set(detector_defaults(args.meta_arch)) | set(detector_defaults(meta_arch)):
        if flag not in keep:
            setattr(args, flag, new[flag])
    args.meta_arch = meta_arch


def with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` with every flag it lacks at its detector's default (``--meta_arch``, Deformable
    DETR when absent): namespaces recorded by older code (published checkpoints predate the BatchFormer
    flags) or filled in by hand build the same model as parsed flags, and no builder restates a default."""
    defaults = flag_defaults(getattr(args, "meta_arch", DEFAULT_META_ARCH))
    return argparse.Namespace(**{**defaults, **vars(args)})


def dataset_metadata(args: argparse.Namespace):
    """``datasets.dataset_metadata(args)``: the ``util.metadata.DatasetMetadata`` of ``--dataset_file``,
    for callers that hold only the flags (``models.build_model(args)`` without metadata)."""
    from datasets import dataset_metadata as of_dataset

    return of_dataset(args)


class FlagError(ValueError):
    """A flag whose value conflicts with the data, found only while running (e.g. more two-stage queries
    than encoder positions); main.py reports it like a bad flag: one line, exit code 2."""


# Validation. Each check returns a message naming the flag and what is allowed, or None; the parser is
# built without constraints (its defaults and types are the public ones), so that parent parsers and
# scripts that fill an args namespace themselves keep working.


# flag: smallest allowed value
_INT_MINIMA = {
    "batch_size": 1, "epochs": 0, "start_epoch": 0, "num_feature_levels": 1, "enc_layers": 1,
    "dec_layers": 1, "dim_feedforward": 1, "hidden_dim": 1, "nheads": 1, "num_queries": 1,
    "dec_n_points": 1, "enc_n_points": 1, "bt_num_layers": 1, "num_workers": 0, "print_freq": 1,
    "max_iters_per_epoch": 0, "max_eval_iters": 0, "eval_every": 0, "num_classes": 1, "max_image_pixels": 0,
    "start_idx": 0,
}
_NON_NEGATIVE = (
    "lr", "lr_backbone", "lr_linear_proj_mult", "weight_decay", "clip_max_norm", "position_embedding_scale",
    "set_cost_class", "set_cost_bbox", "set_cost_giou", "mask_loss_coef", "dice_loss_coef", "cls_loss_coef",
    "bbox_loss_coef", "giou_loss_coef", "bf_lr", "bf_weight_decay", "eos_coef",
)
_UNIT_INTERVAL = ("dropout", "panoptic_threshold")


def _flag(name: str) -> str:
    return f"--{name}"


def _check_numbers(args: argparse.Namespace) -> str | None:
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"{_flag(name)} must be a finite number, got {value}"
    for name, minimum in _INT_MINIMA.items():
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            return f"{_flag(name)} must be an integer >= {minimum}, got {value}"
    for name in _NON_NEGATIVE:
        value = getattr(args, name, None)
        if value is not None and value < 0:
            return f"{_flag(name)} must be >= 0, got {value}"
    for name in _UNIT_INTERVAL:
        value = getattr(args, name, None)
        if value is not None and not 0 <= value <= 1:
            return f"{_flag(name)} must be in [0, 1], got {value}"
    if getattr(args, "image_scale", None) is not None and args.image_scale <= 0:
        return f"--image_scale must be > 0, got {args.image_scale}"
    if getattr(args, "focal_alpha", None) is not None and args.focal_alpha > 1:
        return f"--focal_alpha must be in [0, 1] (or negative: no alpha weighting), got {args.focal_alpha}"
    if getattr(args, "drop_path", None) is not None and not 0 <= args.drop_path < 1:
        return f"--drop_path must be in [0, 1), got {args.drop_path}"
    if getattr(args, "seed", None) is not None and not 0 <= args.seed < 2**32 - 1024:
        # numpy seeds must be < 2**32, and every rank seeds with seed + rank
        return f"--seed must be in [0, 2**32 - 1024), got {args.seed}"
    if getattr(args, "lr_drop_epochs", None):
        bad = [e for e in args.lr_drop_epochs if e < 1]
        if bad:
            return f"--lr_drop_epochs must be epochs >= 1, got {bad}"
    elif getattr(args, "lr_drop", None) is not None and args.lr_drop < 1:
        return f"--lr_drop must be an integer >= 1 (epochs between lr drops), got {args.lr_drop}"
    if all(getattr(args, f"set_cost_{k}", 1) == 0 for k in ("class", "bbox", "giou")):
        return ("--set_cost_class, --set_cost_bbox and --set_cost_giou are all 0: the matching would be "
                "arbitrary")
    return None


def _check_architecture(args: argparse.Namespace) -> str | None:
    from models.detectors import architecture_problem

    return architecture_problem(args, flag_defaults(args.meta_arch))


def _check_batchformer(args: argparse.Namespace) -> str | None:
    from models.detectors import batchformer_of

    try:
        batchformer_of(args)
    except ValueError as e:
        return str(e)
    return None


def _check_dataset_file(args: argparse.Namespace) -> str | None:
    from datasets import DATASET_FILES

    if args.dataset_file not in DATASET_FILES:
        return f"--dataset_file must be one of {', '.join(DATASET_FILES)}, got {args.dataset_file!r}"
    return None


def _check_data(args: argparse.Namespace) -> str | None:
    problem = _check_dataset_file(args)
    if problem:
        return problem
    from datasets.coco_source import uses_split_flags

    if uses_split_flags(args):
        problem = _check_split_files(args)
        if problem:
            return problem
    elif args.dataset_file in ("coco", "coco_panoptic") and not os.path.isdir(args.coco_path):
        return (f"--coco_path {args.coco_path}: no such folder (it holds train2017/, val2017/ and "
                "annotations/instances_{train,val}2017.json, or train/ and valid/ with their "
                "_annotations.coco.json; --dataset_file toy needs no data)")
    if args.dataset_file == "coco_panoptic":
        if not args.coco_panoptic_path:
            return ("--dataset_file coco_panoptic needs --coco_panoptic_path (the folder with "
                    "annotations/panoptic_{train,val}2017.json and the panoptic PNG folders)")
        if not os.path.isdir(args.coco_panoptic_path):
            return f"--coco_panoptic_path {args.coco_panoptic_path}: no such folder"
    for name in ("toy_root", "toy_panoptic_root"):
        problem = _creatable_dir_problem(getattr(args, name, None))
        if problem:
            return f"{_flag(name)} {problem}"
    return None


def _check_split_files(args: argparse.Namespace) -> str | None:
    """The explicit annotation files and image folders (--train_json ... --val_images) of the splits the
    run reads."""
    from datasets.coco_source import SPLIT_FLAGS

    given = next(_flag(name) for name in SPLIT_FLAGS if getattr(args, name, None))
    if args.dataset_file != "coco":
        return f"{given} is for --dataset_file coco (COCO-format annotation files), not {args.dataset_file}"
    for split in ("val",) if args.eval else ("train", "val"):
        ann_file, images = f"{split}_json", f"{split}_images"
        for have, need in ((ann_file, images), (images, ann_file)):
            if getattr(args, have, None) and not getattr(args, need, None):
                return (f"{_flag(have)} needs {_flag(need)}: a split is an annotation file and its "
                        "image folder")
        if not getattr(args, ann_file, None):
            use = "trains on" if split == "train" else "evaluates on"
            return (f"{given} needs {_flag(ann_file)} and {_flag(images)} too (the run {use} the {split} "
                    "split); or drop the explicit files and pass --coco_path")
        if not os.path.isfile(getattr(args, ann_file)):
            return f"{_flag(ann_file)} {getattr(args, ann_file)}: no such file"
        if not os.path.isdir(getattr(args, images)):
            return f"{_flag(images)} {getattr(args, images)}: no such folder"
    return None


# Synthetic sets whose evaluation of an untrained model is a quick check of the pipeline.
_TOY_SETS = ("toy", "toy_panoptic")
_UNTRAINED = ("--eval without --resume evaluates untrained weights (a random transformer and heads)")


def _check_weights(args: argparse.Namespace) -> str | None:
    if getattr(args, "finetune", None):
        if args.resume:
            return ("--finetune starts a new run from a checkpoint's weights and --resume continues a run: "
                    "give one (a stopped fine-tuning run continues with --resume OUTPUT_DIR/checkpoint.pth "
                    "alone)")
        if args.eval:
            return "--finetune trains; to evaluate a checkpoint, pass it with --resume"
        if args.frozen_weights:
            return ("--finetune and --frozen_weights both load a detector: --frozen_weights DET.pth trains "
                    "the mask head on it, --finetune trains all of it")
    if not args.eval or args.resume or args.frozen_weights or args.dataset_file in _TOY_SETS:
        return None
    return (f"{_UNTRAINED}: pass --resume CHECKPOINT (a file, URL or Hugging Face folder) to evaluate a "
            f"trained model (only the toy sets evaluate an untrained one, as a check of the pipeline)")


def is_url(path: str) -> bool:
    """Whether a --resume / --frozen_weights value is a URL to download rather than a path."""
    return urllib.parse.urlparse(path).scheme in _URL_SCHEMES


def _creatable_dir_problem(path: str | None) -> str | None:
    """Why ``path`` can be neither used nor created as a folder, or None (nothing is created here)."""
    if not path:
        return None
    p = Path(path).absolute()
    if p.exists():
        if not p.is_dir():
            return f"{path}: exists and is not a folder"
        return None if os.access(p, os.W_OK | os.X_OK) else f"{path}: the folder is not writable"
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{path}: cannot be created, {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path}: cannot be created, {parent} is not writable"
    return None


def _check_paths(args: argparse.Namespace) -> str | None:
    for name in ("resume", "finetune"):
        path = getattr(args, name, None)
        if path and not is_url(path) and not os.path.isfile(path) and not is_hf_folder(path):
            return (f"--{name} {path}: no such file (a checkpoint path, a Hugging Face model folder "
                    "with config.json, or an http(s) URL)")
    for name in ("frozen_weights", "backbone_weights"):
        path = getattr(args, name, None)
        if path and not (name == "frozen_weights" and is_url(path)) and not os.path.isfile(path):
            return f"{_flag(name)} {path}: no such file"
    problem = _creatable_dir_problem(getattr(args, "output_dir", ""))
    if problem:
        return f"--output_dir {problem}"
    if getattr(args, "tensorboard", False):
        if not getattr(args, "output_dir", ""):
            return "--tensorboard writes to OUTPUT_DIR/tensorboard: give --output_dir"
        if importlib.util.find_spec("tensorboard") is None:
            return "--tensorboard needs the tensorboard package: pip install tensorboard"
    return None


def _check_device(args: argparse.Namespace) -> str | None:
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError:
        return f"--device must be a torch device such as cpu, cuda or cuda:1, got {args.device!r}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {args.device}: CUDA is not available on this machine; use --device cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def _create_output_dir(args: argparse.Namespace) -> str | None:
    """The first process makes --output_dir now (main.py would a moment later): permissions alone do
    not tell whether a folder can be made (root may write /proc but not create folders in it)."""
    output_dir = getattr(args, "output_dir", "")
    if not output_dir or not _is_first_process():
        return None
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"--output_dir {output_dir}: cannot create the folder ({e.strerror or e})"
    return None


# The folder is made last, once every other flag is known to be good.
_CHECKS = (_check_numbers, _check_architecture, _check_batchformer, _check_data, _check_weights, _check_paths,
           _check_device, _create_output_dir)


def model_args_problem(args: argparse.Namespace) -> str | None:
    """The first problem of the flags that build a model (numbers, architecture, BatchFormer, the data
    set's name), or None: what a tool that builds a model without data or training must check."""
    for check in (_check_numbers, _check_architecture, _check_batchformer, _check_dataset_file):
        problem = check(args)
        if problem:
            return problem
    return None


def args_problem(args: argparse.Namespace) -> str | None:
    """The first problem of the parsed flags, as one line naming the flag, or None. With no problem,
    --output_dir exists afterwards (made by the first process)."""
    for check in _CHECKS:
        problem = check(args)
        if problem:
            return problem
    return None


def args_notices(args: argparse.Namespace) -> list[str]:
    """Remarks on flags that are valid but do less than a user may expect."""
    notes = []
    if getattr(args, "drop_path", 0):
        notes.append(f"--drop_path {args.drop_path} has no effect: the public BatchFormerV2 code accepts the "
                     "flag without using it, and so does this one")
    from models.detectors import DETECTORS, ignored_flags

    if getattr(args, "meta_arch", DEFAULT_META_ARCH) in DETECTORS:
        notes += ignored_flags(args, flag_defaults(args.meta_arch))
    if getattr(args, "remove_difficult", False):
        notes.append("--remove_difficult has no effect: the public code accepts the flag (meant for PASCAL "
                     "VOC) without using it, and so does this one")
    per_device = getattr(args, "bf_scope", "device") == "device"
    if args.bf and not args.eval and per_device and args.batch_size < 2:
        notes.append(f"--bf {args.bf} with --batch_size {args.batch_size}: the BatchFormer attends across "
                     "the images of each device's batch, so with one image it attends to nothing but "
                     "itself; use --batch_size 2 or more (or --bf_scope global in a multi-process run)")
    if getattr(args, "tensorboard", False) and args.eval:
        notes.append("--tensorboard with --eval records nothing: it follows training; the evaluation's "
                     "figures are in OUTPUT_DIR/eval_stats.json and eval_per_class.json")
    if args.eval and not args.resume and not args.frozen_weights:
        notes.append(f"{_UNTRAINED}; pass --resume CHECKPOINT to evaluate a trained model")
    if not args.bf:
        unused = [f"--{name}" for name, default in (("bf_scope", "device"), ("bf_lr", 1.0),
                                                     ("bf_weight_decay", None))
                  if getattr(args, name, default) != default]
        if unused:
            notes.append(f"{' and '.join(unused)} without --bf: there is no BatchFormer, so "
                         f"{'they have' if len(unused) > 1 else 'it has'} no effect")
    return notes


def _is_first_process() -> bool:
    """Rank 0 (or not distributed), from the launchers' environment: called before the process group."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return os.environ[var] == "0"
    return True


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check parsed flags before anything is built: a bad one exits through ``parser.error``
    (``<prog>: error: --flag ...``, exit code 2) instead of a traceback from deep inside the model or
    the data; notices on valid but ineffective flags go to stderr once, from the first process."""
    problem = args_problem(args)
    if problem:
        parser.error(problem)
    if _is_first_process():
        for note in args_notices(args):
            print(f"{parser.prog}: warning: {note}", file=sys.stderr, flush=True)
