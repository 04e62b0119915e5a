"""`make demo-finetune`: fine-tune a COCO-shaped (91-class) checkpoint onto a 3-class data set on a CPU.

    python tools/demo_finetune.py [--output_dir exps/demo_finetune] [--min_ap50 0.5]

Nothing is downloaded, so the COCO-shaped checkpoint is made here: the demo's small model
(configs/toy_demo.sh) trained on the toy set with ``--num_classes 91`` for ``--pretrain_epochs`` epochs
(its classifier has COCO's 91 outputs, as a published checkpoint's). The 3-class set is the toy set's
images with the square, circle and triangle boxes only, under 0-based category ids (the other shapes
are unannotated background), written as COCO-format files beside the toy images and read with
``--train_json/--val_json`` at ``--image_scale 0.2`` (COCO's resize recipe at the toy images' scale).
``main.py --finetune`` then trains the same architecture on it for ``--epochs`` epochs, and
tools/demo.py's report follows (plots, detections drawn with the class names, summary.json), failing if
AP@0.5 on the 3-class validation set is below ``--min_ap50``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The toy category ids kept, in the order of their new 0-based ids.
KEPT = (1, 2, 3)  # square, circle, triangle
CONFIG = ROOT / "configs" / "toy_demo.sh"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="exps/demo_finetune", help="where both runs write everything")
    p.add_argument("--pretrain_epochs", type=int, default=2, help="epochs of the 91-class run")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the fine-tuning run")
    p.add_argument("--min_ap50", type=float, default=0.5,
                   help="fail below this AP@0.5 on the 3-class validation set")
    return p.parse_args(argv)


def write_three_class_set(toy_root: Path, out: Path) -> dict[str, Path]:
    """COCO-format files of the toy set's splits with the KEPT classes only, ids 0..2; returns main.py's
    --train_json/--train_images/--val_json/--val_images."""
    from datasets.toy import CLASSES, SPLITS

    new_id = {old: new for new, old in enumerate(KEPT)}
    names = {cid: name for cid, name, _ in CLASSES}
    files = {}
    for split, folder in SPLITS.items():
        with open(toy_root / "annotations" / f"instances_{folder}.json", encoding="utf-8") as f:
            data = json.load(f)
        data["annotations"] = [{**a, "category_id": new_id[a["category_id"]]} for a in data["annotations"]
                               if a["category_id"] in new_id]
        data["categories"] = [{"id": new_id[old], "name": names[old]} for old in KEPT]
        ann_file = out / f"{split}.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        ann_file.write_text(json.dumps(data))
        files[f"{split}_json"], files[f"{split}_images"] = ann_file, toy_root / folder
    return files


def main(argv: list[str] | None = None) -> int:
    from datasets.toy import ensure_toy_dataset
    from tools import demo

    opts = parse_args(argv)
    out = Path(opts.output_dir)
    pretrained = out / "coco91"
    print(f"== a COCO-shaped checkpoint: the toy set with --num_classes 91, {opts.pretrain_epochs} epochs",
          flush=True)
    (pretrained / "log.txt").unlink(missing_ok=True)
    subprocess.run(["sh", str(CONFIG), "--num_classes", "91", "--epochs", str(opts.pretrain_epochs),
                    "--lr_drop", str(opts.pretrain_epochs), "--eval_every", str(opts.pretrain_epochs)],
                   env={**os.environ, "EXP_DIR": str(pretrained)}, check=True)
    files = write_three_class_set(ensure_toy_dataset(), out / "data")
    print(f"== the 3-class set: {files['train_json']}, {files['val_json']} (ids 0-2: square, circle, "
          "triangle)", flush=True)
    # COCO's resize recipe x 0.2 is the toy set's scale (evaluation at 160 pixels, not 800)
    flags = ["--finetune", str(pretrained / "checkpoint.pth"), "--dataset_file", "coco",
             "--image_scale", "0.2", "--epochs", str(opts.epochs), "--lr_drop", str(opts.epochs)]
    for flag, path in files.items():
        flags += [f"--{flag}", str(path)]
    return demo.main(["--config", str(CONFIG), "--output_dir", str(out), "--min_ap50", str(opts.min_ap50),
                      "--", *flags])


if __name__ == "__main__":
    sys.exit(main())
