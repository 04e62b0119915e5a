import contextlib
import io

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets import coco_eval as coco_eval_module
from datasets.coco_eval import CocoEvaluator, faster_backend_available, per_class_table
from datasets.torchvision_datasets import load_coco_api


@pytest.fixture
def coco_gt(tmp_path, write_coco_folder):
    """Three images: two objects and a crowd region, no objects, three objects of two sizes."""
    def ann(i, image_id, cat, bbox, crowd=0):
        return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd,
                "area": bbox[2] * bbox[3]}
    annotations = [ann(1, 1, 1, [10, 20, 30, 40]), ann(2, 1, 3, [5, 5, 20, 20], crowd=1),
                   ann(3, 1, 3, [50, 30, 45, 45]), ann(4, 7, 3, [0, 0, 60, 45]),
                   ann(5, 7, 1, [70, 10, 12, 9]), ann(6, 7, 1, [60, 50, 50, 35])]
    write_coco_folder(tmp_path, annotations=annotations)
    return load_coco_api(str(tmp_path / "annotations" / "instances_val2017.json"))


def _gt_predictions(coco_gt, noise=0.0, seed=0):
    """Predictions equal to the non-crowd ground truth (plus optional box noise and a distractor)."""
    g = torch.Generator().manual_seed(seed)
    preds = {}
    for image_id in coco_gt.getImgIds():
        anns = [a for a in coco_gt.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        scores = torch.linspace(0.9, 0.5, len(anns), dtype=torch.float64)
        if noise:
            boxes = boxes + noise * torch.randn(boxes.shape, generator=g, dtype=torch.float64)
            boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 30.0, 30.0]], dtype=torch.float64)])
            labels = torch.cat([labels, torch.tensor([1])])
            scores = torch.cat([scores, torch.tensor([0.95], dtype=torch.float64)])
        preds[image_id] = {"boxes": boxes, "labels": labels, "scores": scores}
    return preds


def _evaluate(coco_gt, preds, **kw):
    ev = CocoEvaluator(coco_gt, ["bbox"], **kw)
    ev.update(preds)
    ev.synchronize_between_processes()
    ev.accumulate()
    ev.summarize()
    return ev


def test_perfect_predictions_give_ap_one(coco_gt):
    ev = _evaluate(coco_gt, _gt_predictions(coco_gt))
    stats = ev.coco_eval["bbox"].stats
    assert len(stats) == 12
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)
    assert ev.stats()["bbox"][8] == pytest.approx(1.0)  # AR@100


def test_wrong_labels_give_ap_zero(coco_gt):
    preds = _gt_predictions(coco_gt)
    for p in preds.values():
        p["labels"] = 4 - p["labels"]  # swaps categories 1 and 3
    ev = _evaluate(coco_gt, preds)
    assert ev.coco_eval["bbox"].stats[0] == pytest.approx(0.0)


def test_no_detections_at_all(coco_gt):
    empty = {i: {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                 "scores": torch.zeros(0)} for i in coco_gt.getImgIds()}
    ev = _evaluate(coco_gt, empty)
    assert ev.coco_eval["bbox"].stats[0] == 0.0 and ev.coco_results("bbox") == []


def test_results_format_is_xywh(coco_gt):
    ev = CocoEvaluator(coco_gt, "bbox")
    ev.update({7: {"boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0]]), "labels": torch.tensor([3]),
                   "scores": torch.tensor([0.5])}})
    expected = [{"image_id": 7, "category_id": 3, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.5}]
    assert ev.coco_results("bbox") == expected
    # COCOeval's loadRes adds fields to the detections it reads; ours stay in results format.
    ev.synchronize_between_processes()
    ev.accumulate()
    assert ev.coco_results("bbox") == expected


def test_two_ranks_merge_to_the_one_rank_result(coco_gt, monkeypatch):
    preds = _gt_predictions(coco_gt, noise=4.0)
    single = _evaluate(coco_gt, preds)
    ids = sorted(preds)
    # DistributedSampler pads rank 1 with the first image again: image ids[0] is on both ranks.
    rank0 = CocoEvaluator(coco_gt, ["bbox"])
    rank0.update({i: preds[i] for i in ids[0::2]})
    rank1 = CocoEvaluator(coco_gt, ["bbox"])
    rank1.update({i: preds[i] for i in ids[1::2] + [ids[0]]})
    states = [(rank0.img_ids, rank0.results), (rank1.img_ids, rank1.results)]
    monkeypatch.setattr(coco_eval_module, "all_gather", lambda obj: states)
    rank0.synchronize_between_processes()
    rank0.accumulate()
    rank0.summarize()
    assert rank0.img_ids == ids
    assert rank0.coco_results() == single.coco_results()
    assert list(rank0.coco_eval["bbox"].stats) == list(single.coco_eval["bbox"].stats)
    assert 0.0 < single.coco_eval["bbox"].stats[0] < 1.0


@pytest.mark.skipif(not faster_backend_available(), reason="faster-coco-eval is not installed")
def test_faster_backend_gives_the_same_stats(coco_gt):
    preds = _gt_predictions(coco_gt, noise=4.0)
    reference = _evaluate(coco_gt, preds).coco_eval["bbox"].stats
    faster = _evaluate(coco_gt, preds, backend="faster").coco_eval["bbox"].stats
    assert len(faster) == 12
    assert faster == pytest.approx(reference, abs=1e-12)


def test_bad_arguments(coco_gt):
    with pytest.raises(ValueError, match="iou_types"):
        CocoEvaluator(coco_gt, ["keypoints"])
    with pytest.raises(ValueError, match="backend"):
        CocoEvaluator(coco_gt, ["bbox"], backend="fast")


def test_segm_of_the_ground_truth_masks_gives_ap_one(tmp_path, write_coco_folder):
    def ann(i, image_id, cat, x, y, w, h):
        return {"id": i, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "iscrowd": 0,
                "area": w * h, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    write_coco_folder(tmp_path, annotations=[ann(1, 1, 1, 10, 20, 30, 40), ann(2, 7, 3, 50, 30, 45, 45)])
    coco_gt = load_coco_api(str(tmp_path / "annotations" / "instances_val2017.json"))
    preds = {}
    for image_id in coco_gt.getImgIds():
        anns = coco_gt.imgToAnns[image_id]
        img = coco_gt.imgs[image_id]
        masks = torch.zeros(len(anns), 1, img["height"], img["width"])
        for m, a in zip(masks, anns):
            x, y, w, h = a["bbox"]
            m[0, y:y + h, x:x + w] = 1  # the polygon is this rectangle
        preds[image_id] = {"masks": masks, "labels": torch.tensor([a["category_id"] for a in anns]),
                           "scores": torch.ones(len(anns)), "boxes": torch.zeros(len(anns), 4)}
    ev = CocoEvaluator(coco_gt, ["segm"])
    ev.update(preds)
    ev.accumulate()
    ev.summarize()
    assert ev.coco_eval["segm"].stats[0] == pytest.approx(1.0)
    assert ev.coco_results("segm")[0]["segmentation"]["size"] == [80, 100]


# ---- per-class AP -------------------------------------------------------------------------------------

# Ids with gaps (3, 5, 6 unused); "empty" has no instance, "half" has four of which two are found.
_PER_CLASS_CATEGORIES = [{"id": 1, "name": "perfect"}, {"id": 2, "name": "missed"},
                         {"id": 4, "name": "half"}, {"id": 7, "name": "empty"}]
_HALF = 51 / 101  # recall 0.5 at precision 1: 51 of COCOeval's 101 recall points (0.00 .. 0.50)


def _per_class_gt() -> tuple[COCO, dict]:
    """Two 200x200 images and detections whose per-class AP is known by hand.

    perfect: two instances, both detected exactly (AP 1); a crowd region of it is not an instance.
    missed: two instances, detected only far away (AP 0). half: four instances, two detected exactly
    (AP = AP50 = 51/101). empty: no instance, one detection (no AP: COCOeval's -1).
    """
    def ann(i, image_id, cat, x, y, w, h, crowd=0):
        return {"id": i, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
                "iscrowd": crowd, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    gt = [ann(1, 1, 1, 10, 10, 40, 30), ann(2, 2, 1, 100, 100, 50, 50),
          ann(3, 1, 1, 150, 10, 30, 30, crowd=1), ann(4, 1, 2, 60, 60, 30, 40), ann(5, 2, 2, 10, 120, 40, 40),
          ann(6, 1, 4, 10, 150, 20, 20), ann(7, 1, 4, 120, 120, 60, 60), ann(8, 2, 4, 10, 10, 30, 30),
          ann(9, 2, 4, 160, 20, 30, 30)]
    coco = COCO()
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in (1, 2)]
    coco.dataset = {"images": images, "annotations": gt, "categories": _PER_CLASS_CATEGORIES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    found = {1: 0.9, 2: 0.8, 6: 0.7, 8: 0.6}  # ground-truth annotation id -> detection score
    preds = {1: [], 2: []}
    for a in gt:
        if a["id"] in found:
            preds[a["image_id"]].append((a["category_id"], a["bbox"], found[a["id"]]))
    preds[1].append((2, [0, 0, 20, 20], 0.95))  # "missed": nowhere near its instances
    preds[2].append((2, [180, 180, 15, 15], 0.5))
    preds[2].append((7, [50, 50, 30, 30], 0.4))  # "empty"
    return coco, {image_id: _as_prediction(dets) for image_id, dets in preds.items()}


def _as_prediction(dets: list) -> dict:
    boxes = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h), _ in dets], dtype=torch.float64)
    masks = torch.zeros(len(dets), 1, 200, 200)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
        m[0, y0:y1, x0:x1] = 1  # the ground truth's polygons are these rectangles
    return {"boxes": boxes, "labels": torch.tensor([c for c, _, _ in dets]),
            "scores": torch.tensor([s for _, _, s in dets], dtype=torch.float64), "masks": masks}


def _one_category_stats(coco, preds, iou_type: str, cat_id: int) -> list[float]:
    """pycocotools' own COCOeval restricted to one category: the reference of its row."""
    results = CocoEvaluator(coco, [iou_type])
    results.update(preds)
    coco_eval = COCOeval(coco, coco.loadRes(results.coco_results(iou_type)), iou_type)
    coco_eval.params.catIds = [cat_id]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return list(coco_eval.stats)


_BACKENDS = ["pycocotools", pytest.param("faster", marks=pytest.mark.skipif(
    not faster_backend_available(), reason="faster-coco-eval is not installed"))]


@pytest.mark.parametrize("backend", _BACKENDS)
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_per_class_ap_is_known_by_hand_and_agrees_with_pycocotools(iou_type, backend):
    coco, preds = _per_class_gt()
    ev = CocoEvaluator(coco, [iou_type], backend=backend)
    ev.update(preds)
    ev.synchronize_between_processes()
    ev.accumulate()
    ev.summarize()
    rows = ev.per_class()[iou_type]
    assert [(r["category_id"], r["name"], r["instances"]) for r in rows] == [
        (1, "perfect", 2), (2, "missed", 2), (4, "half", 4), (7, "empty", 0)]
    by_name = {r["name"]: r for r in rows}
    assert by_name["perfect"]["AP"] == pytest.approx(1.0) and by_name["perfect"]["AP50"] == pytest.approx(1.0)
    assert by_name["missed"]["AP"] == 0.0 and by_name["missed"]["AP50"] == 0.0
    assert by_name["half"]["AP"] == pytest.approx(_HALF) and by_name["half"]["AP50"] == pytest.approx(_HALF)
    assert by_name["empty"]["AP"] is None and by_name["empty"]["AP50"] is None
    for r in rows:
        reference = _one_category_stats(coco, preds, iou_type, r["category_id"])
        expected = [None if v == -1 else pytest.approx(v, abs=1e-12) for v in reference[:2]]
        assert [r["AP"], r["AP50"]] == expected, r["name"]
    # The overall AP is the mean over the categories that have ground truth.
    stats = ev.coco_eval[iou_type].stats
    assert stats[0] == pytest.approx((1.0 + 0.0 + _HALF) / 3)
    assert stats[1] == pytest.approx((1.0 + 0.0 + _HALF) / 3)


def test_per_class_table_shows_the_names_a_dash_for_no_ground_truth_and_the_mean():
    coco, preds = _per_class_gt()
    ev = _evaluate(coco, preds)
    lines = per_class_table(ev.per_class()["bbox"], "bbox").splitlines()
    assert "bbox" in lines[0] and lines[1].split() == ["id", "class", "AP", "AP50", "instances"]
    assert [line.split() for line in lines[2:]] == [
        ["1", "perfect", "1.000", "1.000", "2"], ["2", "missed", "0.000", "0.000", "2"],
        ["4", "half", f"{_HALF:.3f}", f"{_HALF:.3f}", "4"], ["7", "empty", "-", "-", "0"],
        ["mean", f"{(1 + _HALF) / 3:.3f}", f"{(1 + _HALF) / 3:.3f}", "8"]]
