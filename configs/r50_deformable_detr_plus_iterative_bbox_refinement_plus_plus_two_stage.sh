#!/bin/sh
# Deformable DETR + iterative bounding box refinement + two-stage.
# Extra flags go to main.py: ./configs/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh --coco_path data/coco --resume ckpt.pth --eval
set -e
EXP_DIR=${EXP_DIR:-exps/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage}
set -x
"${PYTHON:-python3}" -u "$(dirname "$0")/../main.py" --output_dir "$EXP_DIR" --with_box_refine --two_stage "$@"
