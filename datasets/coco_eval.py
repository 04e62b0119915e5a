"""COCO evaluation of detections gathered from every process.

Each process calls ``update`` with its predictions; ``synchronize_between_processes`` gathers them
all (images that ``DistributedSampler``'s padding gave to two ranks count once); ``accumulate``
runs COCOeval on the merged set and ``summarize`` prints the standard table. The 12 numbers are then
in ``coco_eval[iou_type].stats``; ``coco_results(iou_type)`` gives the detections in the COCO
results format (image_id, category_id, bbox xywh, score) for ``results_bbox.json``.

``backend='faster'`` runs the same evaluation with faster-coco-eval (if installed), which gives the
same 12 numbers in a fraction of the time (see docs/benchmarks.md).

``per_class()`` reads each category's AP and AP50 from COCOeval's precision array (either backend),
with its number of ground-truth instances; ``per_class_table`` prints them.
"""
from __future__ import annotations

import contextlib
import io
from collections import Counter

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from util.dist import all_gather

IOU_TYPES = ("bbox", "segm")
BACKENDS = ("pycocotools", "faster")


def faster_backend_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _to_list(x) -> list:
    return x.tolist() if isinstance(x, (torch.Tensor, np.ndarray)) else list(x)


def _bbox_results(image_id: int, prediction: dict) -> list[dict]:
    boxes = _to_list(prediction["boxes"])  # (n, 4) xyxy
    labels, scores = _to_list(prediction["labels"]), _to_list(prediction["scores"])
    return [{"image_id": image_id, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
             "score": float(score)}
            for (x0, y0, x1, y1), label, score in zip(boxes, labels, scores)]


def _segm_results(image_id: int, prediction: dict) -> list[dict]:
    masks = prediction["masks"]
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks.ndim == 4:  # (n, 1, H, W)
        masks = masks[:, 0]
    results = []
    labels, scores = _to_list(prediction["labels"]), _to_list(prediction["scores"])
    for mask, label, score in zip(masks > 0.5, labels, scores):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"image_id": image_id, "category_id": int(label), "segmentation": rle,
                        "score": float(score)})
    return results


_PREPARE = {"bbox": _bbox_results, "segm": _segm_results}


class CocoEvaluator:
    """Accumulates predictions {image_id: {scores, labels, boxes xyxy (, masks)}} and runs COCOeval."""

    def __init__(self, coco_gt: COCO, iou_types, backend: str = "pycocotools"):
        iou_types = [iou_types] if isinstance(iou_types, str) else list(iou_types)
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if unknown:
            raise ValueError(f"unsupported iou_types {unknown}; supported: {IOU_TYPES}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown evaluation backend {backend!r}; choose one of {BACKENDS}")
        if backend == "faster" and not faster_backend_available():
            raise ImportError("backend='faster' needs the faster-coco-eval package "
                              "(pip install faster-coco-eval)")
        self.coco_gt = coco_gt
        self.iou_types = iou_types
        self.backend = backend
        self.img_ids: list[int] = []
        # iou_type -> image_id -> that image's results; one entry per image makes merging idempotent
        self.results: dict[str, dict[int, list[dict]]] = {t: {} for t in iou_types}
        self.coco_eval = {t: COCOeval(coco_gt, iouType=t) for t in iou_types}

    def update(self, predictions: dict) -> None:
        for image_id, prediction in predictions.items():
            image_id = int(image_id)
            self.img_ids.append(image_id)
            for iou_type in self.iou_types:
                self.results[iou_type][image_id] = _PREPARE[iou_type](image_id, prediction)

    def synchronize_between_processes(self) -> None:
        """Merge the predictions of every rank; an image evaluated on several ranks keeps one copy."""
        gathered = all_gather((self.img_ids, self.results))
        img_ids: dict[int, None] = {}
        results: dict[str, dict[int, list[dict]]] = {t: {} for t in self.iou_types}
        for rank_img_ids, rank_results in gathered:
            img_ids.update(dict.fromkeys(rank_img_ids))
            for iou_type in self.iou_types:
                for image_id, res in rank_results[iou_type].items():
                    results[iou_type].setdefault(image_id, res)
        self.img_ids = sorted(img_ids)
        self.results = results

    def coco_results(self, iou_type: str = "bbox") -> list[dict]:
        """Detections in the COCO results format, ordered by image id."""
        per_image = self.results[iou_type]
        return [r for image_id in sorted(per_image) for r in per_image[image_id]]

    def _load_detections(self, coco_gt, iou_type: str):
        results = self.coco_results(iou_type)
        if results:
            # loadRes adds area, id, ... to the dicts it is given: keep ours in results format.
            return coco_gt.loadRes([dict(r) for r in results])
        # pycocotools' loadRes fails on an empty list; no detections is a valid (zero) result.
        coco_dt = type(coco_gt)()
        coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                           "categories": list(coco_gt.dataset["categories"])}
        coco_dt.createIndex()
        return coco_dt

    def accumulate(self) -> None:
        """Evaluate every image seen by ``update`` (on any rank, once synchronized)."""
        img_ids = sorted(set(self.img_ids))
        for iou_type in self.iou_types:
            with contextlib.redirect_stdout(io.StringIO()):
                if self.backend == "faster":
                    coco_eval = self._faster_eval(iou_type)
                else:
                    coco_dt = self._load_detections(self.coco_gt, iou_type)
                    coco_eval = COCOeval(self.coco_gt, coco_dt, iou_type)
                coco_eval.params.imgIds = img_ids
                coco_eval.evaluate()
                coco_eval.accumulate()
            self.coco_eval[iou_type] = coco_eval

    def _faster_eval(self, iou_type: str):
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster

        coco_gt = FasterCOCO(self.coco_gt.dataset, use_deepcopy=True)
        return COCOeval_faster(coco_gt, self._load_detections(coco_gt, iou_type), iou_type,
                               print_function=print)

    def summarize(self) -> None:
        for iou_type, coco_eval in self.coco_eval.items():
            print(f"IoU metric: {iou_type}")
            coco_eval.summarize()
            # faster-coco-eval appends AR@0.5 and AR@0.75; keep the 12 numbers COCOeval defines.
            coco_eval.stats = np.asarray(coco_eval.stats[:12])

    def stats(self) -> dict[str, list[float]]:
        """The 12 COCOeval numbers of each IoU type (after ``summarize``)."""
        return {iou_type: [float(v) for v in ev.stats] for iou_type, ev in self.coco_eval.items()}

    def per_class(self) -> dict[str, list[dict]]:
        """Each IoU type's ``per_class_ap`` rows (after ``accumulate``)."""
        return {iou_type: per_class_ap(ev, self.coco_gt) for iou_type, ev in self.coco_eval.items()}


def _mean_defined(precision: np.ndarray) -> float | None:
    """COCOeval's average: over the entries it filled (-1 marks a category it could not score)."""
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else None


def _instances(coco_gt: COCO, img_ids: list[int], area_range: list[float]) -> Counter:
    """Per category, the ground truth COCOeval counts for recall: not crowd, area within the range
    (the rule of its evaluate)."""
    low, high = area_range
    return Counter(a["category_id"] for image_id in img_ids for a in coco_gt.imgToAnns.get(image_id, ())
                   if not a.get("iscrowd", 0) and low <= a["area"] <= high)


def per_class_ap(coco_eval, coco_gt: COCO) -> list[dict]:
    """One row per category of ``coco_gt`` (ids as they are, gaps included), in COCOeval's order:
    ``category_id``, ``name``, ``AP`` (IoU 0.50:0.95), ``AP50``, ``instances``.

    AP and AP50 are the stats[0] and stats[1] of COCOeval restricted to that category: the mean of
    the precision array (IoU thresholds x 101 recall points x category x area x max detections) over
    area "all" and the largest max-detections; their mean over the categories is stats[0]. A category
    without ground truth in the evaluated images has no AP (COCOeval's -1): ``AP`` and ``AP50`` are
    None and ``instances`` 0.
    """
    params = coco_eval.params
    precision = np.asarray(coco_eval.eval["precision"])  # (T, R, K, A, M)
    area = list(params.areaRngLbl).index("all")
    iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    instances = _instances(coco_gt, list(params.imgIds), params.areaRng[area])
    rows = []
    for k, cat_id in enumerate(params.catIds):
        p = precision[:, :, k, area, -1]  # (T, R)
        rows.append({"category_id": int(cat_id), "name": coco_gt.cats[cat_id].get("name", str(cat_id)),
                     "AP": _mean_defined(p), "AP50": _mean_defined(p[iou50]),
                     "instances": instances[cat_id]})
    return rows


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def per_class_table(rows: list[dict], iou_type: str) -> str:
    """The rows as a text table, the mean over the scored categories last; "-" marks no AP."""
    width = max([len("class"), *(len(r["name"]) for r in rows)])
    lines = [f"Per-class AP ({iou_type}); '-': no ground truth in the evaluated images",
             f"{'id':>5}  {'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'instances':>9}"]
    lines += [f"{r['category_id']:>5}  {r['name']:<{width}}  {_figure(r['AP']):>6}  {_figure(r['AP50']):>6}  "
              f"{r['instances']:>9}" for r in rows]
    scored = [r for r in rows if r["AP"] is not None]
    mean_ap = float(np.mean([r["AP"] for r in scored])) if scored else None
    mean_ap50 = float(np.mean([r["AP50"] for r in scored])) if scored else None
    lines.append(f"{'':>5}  {'mean':<{width}}  {_figure(mean_ap):>6}  {_figure(mean_ap50):>6}  "
                 f"{sum(r['instances'] for r in rows):>9}")
    return "\n".join(lines)
