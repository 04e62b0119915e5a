"""Data-loading throughput: images/s of one loader worker with the train (and val) transforms.

Two sets: the toy set (``datasets/toy.py``, ~100-200 px images, toy transforms) and synthetic
640x480 COCO-like JPEGs written to a temporary folder (COCO transforms: shorter side 480..800,
random crops). Each is read from disk and from the in-memory cache (``--cache_mode``). Like a
DataLoader worker the loop runs with one torch thread.

    python benchmarks/data_loading.py [--images 200] [--toy_root data/toy]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import toy  # noqa: E402
from datasets import transforms as T  # noqa: E402
from datasets.coco import CocoDetection  # noqa: E402


def write_coco_like(root: Path, num_images: int) -> None:
    """640x480 JPEGs with noisy gradients and a few filled rectangles / ellipses, and their boxes."""
    rng = np.random.default_rng(0)
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    xs = np.linspace(0, 1, 640, dtype=np.float32)[None, :, None]
    for image_id in range(1, num_images + 1):
        base = rng.uniform(30, 220, size=3).astype(np.float32)
        pixels = base + 60 * xs + rng.normal(0, 20, size=(480, 640, 3)).astype(np.float32)
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 12))):
            w, h = rng.uniform(10, 300), rng.uniform(10, 220)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], fill=colour)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        img.save(root / "train2017" / f"{image_id:012d}.jpg", quality=90)
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 640, "height": 480})
    with open(root / "annotations" / "instances_train2017.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}, f)


def images_per_second(dataset, num_items: int) -> tuple[float, float]:
    """Items per wall-clock second and per CPU second of this process (robust to a busy machine)."""
    random.seed(0)
    dataset[0]  # warm up (first decode, lazy imports)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(num_items):
        dataset[i % len(dataset)]
    return num_items / (time.perf_counter() - start), num_items / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="items timed per configuration")
    parser.add_argument("--toy_root", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # what a DataLoader worker gets

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"torch {torch.__version__}; one process, one torch thread (= one loader worker)")
    start = time.perf_counter()
    toy_root = toy.ensure_toy_dataset(args.toy_root)
    print(f"toy set ready in {time.perf_counter() - start:.1f} s (generated if missing) at {toy_root}")

    with tempfile.TemporaryDirectory() as tmp:
        coco_root = Path(tmp) / "coco"
        write_coco_like(coco_root, 64)
        sets = {
            "toy (96-192 px)": (toy_root / "train2017", toy_root / "annotations" / "instances_train2017.json",
                                toy.TOY_TRANSFORMS),
            "COCO-like 640x480": (coco_root / "train2017",
                                  coco_root / "annotations" / "instances_train2017.json", {}),
        }
        print("images/s per wall-clock second (per CPU second of the worker)")
        print(f"{'data set':20s} {'transforms':10s} {'from disk':>18s} {'cached':>18s}")
        for name, (folder, ann_file, kwargs) in sets.items():
            for image_set in ("train", "val"):
                rates = []
                for cache_mode in (False, True):
                    transforms = T.make_coco_transforms(image_set, **kwargs)
                    ds = CocoDetection(str(folder), str(ann_file), transforms, cache_mode=cache_mode)
                    rates.append(images_per_second(ds, args.images))
                cells = [f"{wall:7.1f} ({cpu:7.1f})" for wall, cpu in rates]
                print(f"{name:20s} {image_set:10s} {cells[0]:>18s} {cells[1]:>18s}")


if __name__ == "__main__":
    main()
