#!/bin/sh
# DETR, ResNet-50 (--meta_arch detr), with the public DETR defaults (models/detectors.py): 100 queries,
# softmax cross-entropy with --eos_coef 0.1, lr 1e-4 (backbone 1e-5), 300 epochs, lr drop at 200, FFN 2048.
# DC5: add --dilation; R101: --backbone resnet101. BatchFormerV2: ./configs/r50_detr_bf.sh.
# Extra flags go to main.py: ./configs/r50_detr.sh --coco_path data/coco --resume detr-r50-e632da11.pth --eval
set -e
EXP_DIR=${EXP_DIR:-exps/r50_detr}
set -x
"${PYTHON:-python3}" -u "$(dirname "$0")/../main.py" --output_dir "$EXP_DIR" --meta_arch detr "$@"
