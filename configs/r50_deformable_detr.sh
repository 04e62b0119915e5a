#!/bin/sh
# Deformable DETR, ResNet-50, multi-scale (4 levels).
# Extra flags go to main.py: ./configs/r50_deformable_detr.sh --coco_path data/coco --resume ckpt.pth --eval
set -e
EXP_DIR=${EXP_DIR:-exps/r50_deformable_detr}
set -x
"${PYTHON:-python3}" -u "$(dirname "$0")/../main.py" --output_dir "$EXP_DIR" "$@"
