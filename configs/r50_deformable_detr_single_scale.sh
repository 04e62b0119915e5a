#!/bin/sh
# Deformable DETR, ResNet-50, single scale.
# Extra flags go to main.py: ./configs/r50_deformable_detr_single_scale.sh --coco_path data/coco --resume ckpt.pth --eval
set -e
EXP_DIR=${EXP_DIR:-exps/r50_deformable_detr_single_scale}
set -x
"${PYTHON:-python3}" -u "$(dirname "$0")/../main.py" --output_dir "$EXP_DIR" --num_feature_levels 1 "$@"
