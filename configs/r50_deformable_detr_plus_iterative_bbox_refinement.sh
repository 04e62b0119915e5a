#!/bin/sh
# Deformable DETR + iterative bounding box refinement.
# Extra flags go to main.py: ./configs/r50_deformable_detr_plus_iterative_bbox_refinement.sh --coco_path data/coco --resume ckpt.pth --eval
set -e
EXP_DIR=${EXP_DIR:-exps/r50_deformable_detr_plus_iterative_bbox_refinement}
set -x
"${PYTHON:-python3}" -u "$(dirname "$0")/../main.py" --output_dir "$EXP_DIR" --with_box_refine "$@"
