#!/bin/sh
# Deformable DETR + refinement + two-stage, with BatchFormerV2.
# Extra flags go to main.py: ./configs/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage_bf.sh --coco_path data/coco --resume ckpt.pth --eval
set -e
EXP_DIR=${EXP_DIR:-exps/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage_bf}
set -x
"${PYTHON:-python3}" -u "$(dirname "$0")/../main.py" --output_dir "$EXP_DIR" --with_box_refine --two_stage --bf 1 --insert_idx 0 --share_bf 0 "$@"
