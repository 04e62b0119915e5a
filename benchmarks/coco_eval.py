"""COCO evaluation time for synthetic detections: pycocotools vs faster-coco-eval.

A synthetic COCO-like ground truth (default 5,000 images of 640x480, 1-15 objects each over the 80
COCO category ids, ~7 % crowd) and detections the way Deformable DETR reports them (100 per image:
jittered copies of the ground truth plus random boxes) go through ``CocoEvaluator`` with each
backend: ``update`` + ``synchronize_between_processes`` + ``accumulate`` + ``summarize``. The two
runs must give the same 12 numbers.

    python benchmarks/coco_eval.py [--images 5000] [--dets 100]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pycocotools.coco import COCO  # noqa: E402

from datasets.coco_eval import CocoEvaluator, faster_backend_available  # noqa: E402

# The 80 category ids of COCO (1..90 with gaps).
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in
                     (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def synthetic_ground_truth(num_images: int, rng: np.random.Generator) -> COCO:
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 640, "height": 480})
        for _ in range(int(rng.integers(1, 16))):
            w, h = rng.uniform(8, 320), rng.uniform(8, 240)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice(COCO_CATEGORY_IDS)),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.07)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c, "name": str(c)} for c in COCO_CATEGORY_IDS]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def synthetic_detections(coco: COCO, dets_per_image: int, rng: np.random.Generator) -> dict:
    """image_id -> {scores, labels, boxes xyxy}: noisy ground truth first, random boxes after."""
    predictions = {}
    for image_id in coco.getImgIds():
        gt = np.array([a["bbox"] for a in coco.imgToAnns[image_id]], dtype=np.float64).reshape(-1, 4)
        gt_labels = np.array([a["category_id"] for a in coco.imgToAnns[image_id]], dtype=np.int64)
        n_random = dets_per_image - len(gt)
        wh = rng.uniform(8, 300, size=(n_random, 2))
        xy = rng.uniform(0, 1, size=(n_random, 2)) * (np.array([640.0, 480.0]) - wh)
        boxes = np.concatenate([gt + rng.normal(0, 4, size=gt.shape), np.concatenate([xy, wh], 1)])
        boxes[:, 2:] = boxes[:, :2] + np.maximum(boxes[:, 2:], 1)
        labels = np.concatenate([gt_labels, rng.choice(COCO_CATEGORY_IDS, size=n_random)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(gt)), rng.uniform(0.0, 0.6, n_random)])
        predictions[image_id] = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                                 "scores": torch.from_numpy(scores)}
    return predictions


def run(coco: COCO, predictions: dict, backend: str) -> tuple[float, float, float, np.ndarray]:
    """Seconds in update + synchronize, in accumulate + summarize, CPU seconds of both; the 12 stats."""
    cpu = time.process_time()
    start = time.perf_counter()
    evaluator = CocoEvaluator(coco, ["bbox"], backend=backend)
    evaluator.update(predictions)
    evaluator.synchronize_between_processes()
    collected = time.perf_counter()
    evaluator.accumulate()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    done = time.perf_counter()
    cpu = time.process_time() - cpu
    return collected - start, done - collected, cpu, np.asarray(evaluator.coco_eval["bbox"].stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    coco = synthetic_ground_truth(args.images, rng)
    predictions = synthetic_detections(coco, args.dets, rng)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"torch {torch.__version__}")
    print(f"{args.images} images, {len(coco.anns)} ground-truth boxes, {args.images * args.dets} detections")

    backends = ["pycocotools"] + (["faster"] if faster_backend_available() else [])
    times, stats = {}, {}
    print(f"{'backend':12s} {'update':>8s} {'COCOeval':>9s} {'total':>8s} {'CPU time':>9s}"
          "  (wall-clock seconds, then process CPU seconds)")
    for backend in backends:
        t_update, t_eval, cpu, stats[backend] = run(coco, predictions, backend)
        times[backend] = t_update + t_eval
        ap, ap50 = stats[backend][:2]
        print(f"{backend:12s} {t_update:7.1f}s {t_eval:8.1f}s {times[backend]:7.1f}s {cpu:8.1f}s   "
              f"AP {ap:.4f}  AP50 {ap50:.4f}")
    if "faster" in stats:
        diff = float(np.abs(stats["faster"] - stats["pycocotools"]).max())
        print(f"speed-up of faster-coco-eval: {times['pycocotools'] / times['faster']:.1f}x; "
              f"largest difference over the 12 stats: {diff:.1e}")
    else:
        print("faster-coco-eval is not installed: only pycocotools was timed")


if __name__ == "__main__":
    main()
