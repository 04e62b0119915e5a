"""Panoptic quality (PQ) with the official COCO panoptic definition, and the evaluator of ``--eval``.

Definition (Kirillov et al., "Panoptic Segmentation", and the COCO panoptic task):

- A ground-truth (GT) and a predicted segment of the same category match when their IoU > 0.5;
  with non-overlapping segments such a match is unique. The union leaves out the predicted
  pixels that fall on VOID (segment id 0 in the GT PNG).
- Crowd GT segments are never matched and never count as false negatives.
- An unmatched predicted segment is a false positive, unless more than half of its area lies on
  VOID or on the crowd region of its own category (COCO has at most one crowd segment per
  category and image; we add the overlaps of all of them, which is the same there).
- Per category: PQ = sum(IoU of matches) / (TP + FP/2 + FN/2) = SQ * RQ with SQ = mean IoU of
  the matches and RQ = TP / (TP + FP/2 + FN/2). Splits (all, things, stuff) average over the
  categories that occur in the GT or in the predictions (TP + FP + FN > 0); ``n`` is their count.

Values are fractions in [0, 1] as the official ``pq_compute`` returns them.
"""
from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from PIL import Image

from util.dist import all_gather, is_main_process
from util.panoptic import OFFSET, id2rgb, png_bytes, read_panoptic_png, rgb2id  # noqa: F401 (re-exported)

VOID = 0


@dataclass
class _CategoryStat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


class PQStat:
    """Per-category sums of matched IoU, TP, FP and FN, accumulated image by image."""

    def __init__(self) -> None:
        self.per_category: dict[int, _CategoryStat] = defaultdict(_CategoryStat)

    def __iadd__(self, other: PQStat) -> PQStat:
        for cat, s in other.per_category.items():
            mine = self.per_category[cat]
            mine.iou += s.iou
            mine.tp += s.tp
            mine.fp += s.fp
            mine.fn += s.fn
        return self

    def add_image(self, gt_ids: np.ndarray, gt_segments: list[dict], pred_ids: np.ndarray,
                  pred_segments: list[dict], categories: dict[int, dict], name: str = "") -> None:
        """Accumulate one image.

        gt_ids / pred_ids: (H, W) integer segment ids (0 = VOID); *_segments: the
        ``segments_info`` lists (``id``, ``category_id``, and ``iscrowd`` for the GT);
        ``categories``: category id -> category dict. ``name`` only labels error messages.
        """
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(f"{name}: predicted PNG is {pred_ids.shape}, ground truth is {gt_ids.shape}")
        gt_info = {s["id"]: s for s in gt_segments}
        pred_info = {s["id"]: s for s in pred_segments}
        for s in pred_segments:
            if s["category_id"] not in categories:
                raise KeyError(f"{name}: predicted segment {s['id']} has unknown category_id "
                               f"{s['category_id']}")
        gt_area = _areas(gt_ids, gt_info, f"{name} ground truth")
        pred_area = _areas(pred_ids, pred_info, f"{name} prediction")
        missing = set(pred_info) - set(pred_area)
        if missing:
            raise KeyError(f"{name}: predicted segments {sorted(missing)} are listed in segments_info "
                           "but absent from the PNG")

        # Overlap areas of every (gt id, pred id) pair present in the image.
        codes, counts = np.unique(gt_ids.astype(np.int64) * OFFSET + pred_ids.astype(np.int64),
                                  return_counts=True)
        overlap = {(int(c // OFFSET), int(c % OFFSET)): int(n) for c, n in zip(codes, counts)}

        gt_matched, pred_matched = set(), set()
        for (g, p), inter in overlap.items():
            if g not in gt_info or p not in pred_info:
                continue
            if gt_info[g].get("iscrowd", 0) == 1:
                continue
            if gt_info[g]["category_id"] != pred_info[p]["category_id"]:
                continue
            union = pred_area[p] + gt_area[g] - inter - overlap.get((VOID, p), 0)
            iou = inter / union
            if iou > 0.5:
                stat = self.per_category[gt_info[g]["category_id"]]
                stat.tp += 1
                stat.iou += iou
                gt_matched.add(g)
                pred_matched.add(p)

        crowd_by_category: dict[int, list[int]] = defaultdict(list)
        for g, info in gt_info.items():
            if info.get("iscrowd", 0) == 1:
                crowd_by_category[info["category_id"]].append(g)
            elif g not in gt_matched:
                self.per_category[info["category_id"]].fn += 1

        for p, info in pred_info.items():
            if p in pred_matched:
                continue
            cat = info["category_id"]
            ignored = overlap.get((VOID, p), 0) + sum(overlap.get((g, p), 0) for g in crowd_by_category[cat])
            if ignored / pred_area[p] > 0.5:
                continue
            self.per_category[cat].fp += 1

    def average(self, categories: dict[int, dict], isthing: bool | None = None) -> tuple[dict, dict]:
        """PQ, SQ, RQ averaged over the categories of a split (``isthing`` None = all).

        Returns ({pq, sq, rq, n}, per-class {category id: {pq, sq, rq}})."""
        pq = sq = rq = 0.0
        n = 0
        per_class = {}
        for cat, info in categories.items():
            if isthing is not None and bool(info.get("isthing", 1)) != isthing:
                continue
            s = self.per_category.get(cat)
            if s is None or s.tp + s.fp + s.fn == 0:
                continue
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            c_pq = s.iou / denom
            c_sq = s.iou / s.tp if s.tp else 0.0
            c_rq = s.tp / denom
            per_class[cat] = {"pq": c_pq, "sq": c_sq, "rq": c_rq}
            pq, sq, rq, n = pq + c_pq, sq + c_sq, rq + c_rq, n + 1
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def summary(self, categories: dict[int, dict]) -> dict:
        """{'All', 'Things', 'Stuff': {pq, sq, rq, n}, 'per_class': {...}} like the official pq_compute."""
        results = {}
        for split, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            results[split], per_class = self.average(categories, isthing)
            if isthing is None:
                results["per_class"] = per_class
        return results


def _areas(ids: np.ndarray, info: dict[int, dict], what: str) -> dict[int, int]:
    """Pixel count of every non-VOID segment id of a PNG; every id must be listed in ``info``."""
    labels, counts = np.unique(ids, return_counts=True)
    areas = {}
    for label, count in zip(labels.tolist(), counts.tolist()):
        if label == VOID:
            continue
        if label not in info:
            raise KeyError(f"{what}: segment id {label} is in the PNG but not in segments_info")
        areas[label] = count
    return areas


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"panoptic annotation file not found: {path}")
    with open(path) as f:
        return json.load(f)


def pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: str | None = None,
               pred_folder: str | None = None) -> dict:
    """PQ of a predictions file against a COCO panoptic GT file (same call as the official function).

    Folders default to the JSON path without its extension. Every GT image must have a prediction.
    """
    gt_json = _load_json(gt_json_file)
    pred_json = _load_json(pred_json_file)
    gt_folder = gt_folder or os.path.splitext(gt_json_file)[0]
    pred_folder = pred_folder or os.path.splitext(pred_json_file)[0]
    categories = {c["id"]: c for c in gt_json["categories"]}
    preds = {a["image_id"]: a for a in pred_json["annotations"]}
    stat = PQStat()
    for gt_ann in gt_json["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in preds:
            raise KeyError(f"{pred_json_file}: no prediction for image_id {image_id}")
        pred_ann = preds[image_id]
        stat.add_image(
            read_panoptic_png(os.path.join(gt_folder, gt_ann["file_name"])), gt_ann["segments_info"],
            read_panoptic_png(os.path.join(pred_folder, pred_ann["file_name"])), pred_ann["segments_info"],
            categories, name=f"image {image_id}",
        )
    return stat.summary(categories)


class PanopticEvaluator:
    """Collects ``PostProcessPanoptic`` results during ``--eval`` and computes PQ at the end.

    Each rank scores its own images against the GT PNGs as they come (one ``PQStat`` per image is
    all it sends to the others), so no folder needs to be shared for the figures. An image scored
    on several ranks (the distributed sampler pads the last shard with the first images) or twice
    counts once. With ``output_dir`` the
    predictions are also written in COCO panoptic results format: the PNGs by every rank into
    ``output_dir`` and ``output_dir/predictions.json`` by the main process.
    """

    def __init__(self, ann_file: str, ann_folder: str, output_dir: str | None = None):
        gt = _load_json(ann_file)
        if not os.path.isdir(ann_folder):
            raise FileNotFoundError(f"panoptic PNG folder not found: {ann_folder}")
        self.gt_json_file = ann_file
        self.gt_folder = ann_folder
        self.gt = {a["image_id"]: a for a in gt["annotations"]}
        self.categories = {c["id"]: c for c in gt["categories"]}
        self.output_dir = output_dir
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
        self.stat = PQStat()
        self.image_stats: dict[int, PQStat] = {}
        self.predictions: list[dict] = []

    def update(self, results: list[dict], targets: list[dict] | None = None) -> None:
        """results: ``PostProcessPanoptic`` outputs ({png_string, segments_info}) at the original image
        size; the image id is ``result['image_id']`` or that of the matching target."""
        for i, res in enumerate(results):
            if "image_id" in res:
                image_id = int(res["image_id"])
            elif targets is not None:
                image_id = int(targets[i]["image_id"].item())
            else:
                raise ValueError("PanopticEvaluator.update: the results carry no image_id and no targets "
                                 "were given")
            if image_id not in self.gt:
                raise KeyError(f"image_id {image_id} has no annotation in {self.gt_json_file}")
            if image_id in self.image_stats:  # padding of the distributed sampler
                continue
            gt_ann = self.gt[image_id]
            segments = [{"id": s["id"], "category_id": s["category_id"]} for s in res["segments_info"]]
            with Image.open(io.BytesIO(res["png_string"])) as im:
                pred_ids = rgb2id(np.asarray(im.convert("RGB")))
            stat = PQStat()
            stat.add_image(read_panoptic_png(os.path.join(self.gt_folder, gt_ann["file_name"])),
                           gt_ann["segments_info"], pred_ids, segments, self.categories,
                           name=f"image {image_id}")
            self.image_stats[image_id] = stat
            self.stat += stat
            if self.output_dir:
                with open(os.path.join(self.output_dir, gt_ann["file_name"]), "wb") as f:
                    f.write(res["png_string"])
            self.predictions.append({"image_id": image_id, "file_name": gt_ann["file_name"],
                                     "segments_info": segments})

    def synchronize_between_processes(self) -> None:
        """Merge every rank's images; an image scored on several ranks keeps one copy."""
        image_stats: dict[int, PQStat] = {}
        predictions: dict[int, dict] = {}
        for rank_stats, rank_predictions in all_gather((self.image_stats, self.predictions)):
            for image_id, stat in rank_stats.items():
                image_stats.setdefault(image_id, stat)
            for p in rank_predictions:
                predictions.setdefault(p["image_id"], p)
        self.image_stats = image_stats
        self.stat = PQStat()
        for image_id in sorted(image_stats):
            self.stat += image_stats[image_id]
        self.predictions = [predictions[i] for i in sorted(predictions)]

    def summarize(self) -> dict:
        """{'All', 'Things', 'Stuff': {pq, sq, rq, n}, 'per_class'}; the main process writes the JSON."""
        if self.output_dir and is_main_process():
            with open(os.path.join(self.output_dir, "predictions.json"), "w") as f:
                json.dump({"annotations": self.predictions, "categories": list(self.categories.values())}, f)
        return self.stat.summary(self.categories)


def build_panoptic_evaluator(dataset, output_dir: str | None) -> PanopticEvaluator | None:
    """The evaluator of a data set with panoptic ground truth (``ann_file``, ``ann_folder``), else None.

    Predictions go to ``<output_dir>/panoptic_eval/`` when output_dir is set."""
    while hasattr(dataset, "dataset"):  # DataLoader, Subset
        dataset = dataset.dataset
    if not (hasattr(dataset, "ann_file") and hasattr(dataset, "ann_folder")):
        return None
    out = os.path.join(output_dir, "panoptic_eval") if output_dir else None
    return PanopticEvaluator(dataset.ann_file, dataset.ann_folder, out)

