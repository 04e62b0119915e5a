#!/bin/sh
# Deformable DETR with BatchFormerV2 (two-stream, one layer after encoder layer 0, not shared).
# Extra flags go to main.py: ./configs/r50_deformable_detr_bf.sh --coco_path data/coco --resume ckpt.pth --eval
set -e
EXP_DIR=${EXP_DIR:-exps/r50_deformable_detr_bf}
set -x
"${PYTHON:-python3}" -u "$(dirname "$0")/../main.py" --output_dir "$EXP_DIR" --bf 1 --insert_idx 0 --share_bf 0 "$@"
