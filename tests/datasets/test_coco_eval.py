import pytest
import torch

from datasets import coco_eval as coco_eval_module
from datasets.coco_eval import CocoEvaluator, faster_backend_available
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
