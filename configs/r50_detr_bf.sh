#!/bin/sh
# DETR with BatchFormerV2 as the public BatchFormer DETR code runs it (the paper's setting): two streams
# after encoder layer 0 (--bf 3 --insert_idx 0), one shared layer. Without --insert_idx, --bf 3 inserts
# it after every encoder layer from --start_idx; --bf 1 after the whole encoder, --bf 2 after layer 4.
# Extra flags go to main.py: ./configs/r50_detr_bf.sh --coco_path data/coco --use_checkpoint
set -e
EXP_DIR=${EXP_DIR:-exps/r50_detr_bf}
set -x
"${PYTHON:-python3}" -u "$(dirname "$0")/../main.py" --output_dir "$EXP_DIR" --meta_arch detr --bf 3 --insert_idx 0 "$@"
