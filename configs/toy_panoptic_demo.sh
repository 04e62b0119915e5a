#!/bin/sh
# `make demo-panoptic`: the demo's model (configs/toy_demo.sh) with the mask head, trained jointly on
# the toy panoptic set (120 train / 40 val images, 5 thing and 3 stuff classes). Masks need more
# iterations than boxes: 16 epochs (480 iterations of 4 images), the lr dropped for the last 4,
# evaluation (PQ, box and mask AP) every 4 epochs; about 7 minutes on two cores. Extra flags go to
# main.py.
set -e
export EXP_DIR="${EXP_DIR:-exps/demo_panoptic}"
exec sh "$(dirname "$0")/toy_demo.sh" --dataset_file toy_panoptic --masks \
    --epochs 16 --lr_drop 12 --eval_every 4 "$@"
