"""Convert DETR-family checkpoints between Hugging Face transformers' format and ours.

    python tools/convert_hf.py to-ours path/to/hf_folder r50_deformable_detr.pth
    python tools/convert_hf.py to-hf r50_deformable_detr.pth path/to/hf_folder [--naming timm]

Model types: Deformable DETR (``DeformableDetrForObjectDetection``), DETR (``DetrForObjectDetection``,
``DetrForSegmentation``) and Conditional DETR (``ConditionalDetrForObjectDetection``,
``ConditionalDetrForSegmentation``); ``--meta_arch`` and ``--masks`` in the checkpoint's args choose.

``to-ours`` reads a transformers folder (``config.json`` with ``model.safetensors`` or
``pytorch_model.bin``, read as data: nothing in it runs) and writes our checkpoint ``{model, args}``,
the args being the flags that build its architecture (the classes from ``id2label``). main.py's
``--resume`` and test.py accept such a folder directly as well.

``to-hf`` writes ``config.json`` and ``model.safetensors`` that transformers' ``from_pretrained(folder)``
loads, ``id2label`` naming the data set's classes. ``--naming resnet`` (default) names the backbone as
transformers' own ResNet, which loads without timm; ``--naming timm`` as its timm backbone, like the
published checkpoints (needed for --dilation models).

Whatever either side cannot represent is refused with one line naming the config field or flag.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.errors import DatasetError, data_error_message  # noqa: E402
from util.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from util.hf.convert import BACKBONE_NAMINGS, load_hf_checkpoint, save_hf_folder  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="convert_hf.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="direction", required=True)
    to_ours = sub.add_parser("to-ours", help="Hugging Face folder -> our checkpoint file")
    to_ours.add_argument("hf_folder")
    to_ours.add_argument("output", help="checkpoint file to write (.pth)")
    to_hf = sub.add_parser("to-hf", help="our checkpoint file -> Hugging Face folder")
    to_hf.add_argument("checkpoint", help="checkpoint path or URL with 'model' and 'args'")
    to_hf.add_argument("output", help="folder to write config.json and model.safetensors into")
    to_hf.add_argument("--naming", choices=BACKBONE_NAMINGS, default="resnet",
                       help="backbone tensor names: transformers' ResNet (default) or timm's")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.direction == "to-ours":
            if not os.path.isdir(args.hf_folder):
                raise CheckpointError(f"{args.hf_folder!r} is not a folder (expected config.json and "
                                      "model.safetensors or pytorch_model.bin)")
            checkpoint = load_hf_checkpoint(args.hf_folder)
            save_checkpoint(checkpoint, args.output)
            print(f"wrote {len(checkpoint['model'])} tensors to {args.output}")
        else:
            checkpoint = load_checkpoint(args.checkpoint)
            if not isinstance(checkpoint, dict) or "model" not in checkpoint:
                raise CheckpointError(f"{args.checkpoint}: expected a dict with 'model' and 'args' entries")
            save_hf_folder(checkpoint, args.output, naming=args.naming, progress=print)
    except CheckpointError as e:
        print(f"convert_hf.py: error: {e}", file=sys.stderr)
        return 1
    except DatasetError as e:  # the class names of a checkpoint that records none come from its data set
        print(f"convert_hf.py: data error: {data_error_message(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
