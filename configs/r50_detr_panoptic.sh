#!/bin/sh
# DETR panoptic segmentation, DETR's two-step recipe on COCO panoptic (250 classes):
#   1. the detector on the panoptic set's boxes (300 epochs):
#      EXP_DIR=exps/r50_detr_coco_panoptic ./configs/r50_detr.sh --dataset_file coco_panoptic \
#          --coco_path data/coco --coco_panoptic_path data/coco_panoptic
#   2. the mask head on that detector's frozen weights, 25 epochs, lr drop at 15 (this script):
#      DETECTOR=exps/r50_detr_coco_panoptic/checkpoint.pth ./configs/r50_detr_panoptic.sh \
#          --coco_path data/coco --coco_panoptic_path data/coco_panoptic
# With BatchFormerV2 (published PQ 43.4 -> 45.1): step 1 with ./configs/r50_detr_bf.sh, step 2 with the
# detector's BatchFormer flags and activation checkpointing: ... ./configs/r50_detr_panoptic.sh \
#     --bf 3 --insert_idx 0 --use_checkpoint ...
# Evaluate: ./configs/r50_detr_panoptic.sh ... --resume exps/r50_detr_panoptic/checkpoint.pth --eval
# (DETECTOR is not needed then); PQ, box and mask AP go to eval_stats.json.
set -e
EXP_DIR=${EXP_DIR:-exps/r50_detr_panoptic}
if [ -n "$DETECTOR" ]; then
    set -- --frozen_weights "$DETECTOR" "$@"
fi
set -x
"${PYTHON:-python3}" -u "$(dirname "$0")/../main.py" --output_dir "$EXP_DIR" --meta_arch detr --masks \
    --dataset_file coco_panoptic --epochs 25 --lr_drop 15 "$@"
