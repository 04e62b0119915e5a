"""PQ: hand-computed cases, ground truth as predictions, and the official panopticapi as reference."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from datasets.panoptic_eval import PanopticEvaluator, PQStat, id2rgb, png_bytes, pq_compute, rgb2id

CATEGORIES = [
    {"id": 1, "name": "circle", "isthing": 1},
    {"id": 2, "name": "square", "isthing": 1},
    {"id": 3, "name": "triangle", "isthing": 1},
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 11, "name": "ground", "isthing": 0},
]
CATS = {c["id"]: c for c in CATEGORIES}


def _random_gt(rng: np.random.Generator, h: int = 48, w: int = 64):
    """(H, W) ids and segments_info: two stuff bands, things as rectangles, some VOID, <= 1 crowd/class."""
    ids = np.zeros((h, w), np.int64)
    segments = []
    next_id = int(rng.integers(1, 1000))
    split = int(rng.integers(h // 4, 3 * h // 4))
    for cat, rows in ((10, slice(0, split)), (11, slice(split, h))):
        ids[rows] = next_id
        segments.append({"id": next_id, "category_id": cat, "iscrowd": 0})
        next_id += int(rng.integers(1, 70000))
    crowd_used = set()
    for _ in range(int(rng.integers(2, 7))):
        cat = int(rng.choice([1, 2, 3]))
        y0, x0 = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
        y1, x1 = y0 + int(rng.integers(4, h // 2)), x0 + int(rng.integers(4, w // 2))
        ids[y0:y1, x0:x1] = next_id
        crowd = int(cat not in crowd_used and rng.random() < 0.25)
        if crowd:
            crowd_used.add(cat)
        segments.append({"id": next_id, "category_id": cat, "iscrowd": crowd})
        next_id += int(rng.integers(1, 70000))
    # VOID: a random blob and thin borders between segments
    y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
    ids[y0:y0 + int(rng.integers(2, 10)), x0:x0 + int(rng.integers(2, 12))] = 0
    labels, counts = np.unique(ids, return_counts=True)
    area = dict(zip(labels.tolist(), counts.tolist()))
    # the official pq_compute takes GT areas from the JSON, as COCO stores them
    segments = [{**s, "area": area[s["id"]]} for s in segments if s["id"] in area]
    return ids, segments


def _random_pred(rng: np.random.Generator, gt_ids: np.ndarray, gt_segments: list[dict]):
    """A perturbed copy of the GT: shifted segments, wrong classes, merged and spurious segments."""
    h, w = gt_ids.shape
    pred = np.roll(gt_ids, shift=(int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
    cat_of = {s["id"]: s["category_id"] for s in gt_segments}
    cat_of[0] = 3
    remap = {}
    segments = []
    for old in np.unique(pred).tolist():
        r = rng.random()
        if r < 0.1 and segments:  # merge into an earlier predicted segment
            remap[old] = segments[int(rng.integers(len(segments)))]["id"]
            continue
        new_id = len(segments) * 37 + 5
        cat = cat_of[old] if rng.random() > 0.15 else int(rng.choice(list(CATS)))
        remap[old] = new_id
        segments.append({"id": new_id, "category_id": cat})
    pred = np.vectorize(remap.get)(pred)
    for _ in range(int(rng.integers(0, 3))):  # spurious segments, partly on VOID or crowd
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        new_id = len(segments) * 37 + 5
        pred[y0:y0 + int(rng.integers(2, 12)), x0:x0 + int(rng.integers(2, 12))] = new_id
        segments.append({"id": new_id, "category_id": int(rng.choice(list(CATS)))})
    present = set(np.unique(pred).tolist())
    return pred, [s for s in segments if s["id"] in present]


def _write_set(folder: str, name: str, images: list[tuple[np.ndarray, list[dict]]]) -> tuple[str, str]:
    png_dir = os.path.join(folder, name)
    os.makedirs(png_dir, exist_ok=True)
    anns = []
    for image_id, (ids, segments) in enumerate(images):
        file_name = f"{image_id:06d}.png"
        Image.fromarray(id2rgb(ids)).save(os.path.join(png_dir, file_name))
        anns.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})
    json_file = os.path.join(folder, name + ".json")
    with open(json_file, "w") as f:
        json.dump({"annotations": anns, "categories": CATEGORIES,
                   "images": [{"id": i, "file_name": f"{i:06d}.jpg"} for i in range(len(images))]}, f)
    return json_file, png_dir


def test_rgb2id_round_trip():
    ids = np.array([[0, 1, 255], [256, 65536 + 7, 256 ** 3 - 1]])
    assert (rgb2id(id2rgb(ids)) == ids).all()
    with pytest.raises(ValueError, match="segment ids"):
        id2rgb(np.array([[256 ** 3]]))


def test_hand_computed_case():
    # GT: sky (id 1) top half, a square (id 2) of 4x4 = 16 px, rest ground (id 3), a VOID strip.
    gt = np.full((8, 8), 3)
    gt[:4] = 1
    gt[4:8, 0:4] = 2
    gt[:, 7] = 0
    gt_seg = [{"id": 1, "category_id": 10, "iscrowd": 0}, {"id": 2, "category_id": 2, "iscrowd": 0},
              {"id": 3, "category_id": 11, "iscrowd": 0}]
    pred = np.zeros((8, 8), np.int64)
    pred[:4] = 5          # sky exactly, plus the VOID column (left out of the union)
    pred[4:8, 0:3] = 6    # square, 12 of 16 px -> IoU 0.75
    pred[4:8, 3:8] = 7    # a "circle" over ground: wrong class -> FP, ground -> FN
    pred_seg = [{"id": 5, "category_id": 10}, {"id": 6, "category_id": 2}, {"id": 7, "category_id": 1}]
    stat = PQStat()
    stat.add_image(gt, gt_seg, pred, pred_seg, CATS)
    res = stat.summary(CATS)
    # sky: IoU 28/28 = 1 (the 4 VOID px of the prediction leave the union); square: 0.75;
    # circle: 1 FP -> PQ 0; ground: 1 FN -> PQ 0.
    assert res["per_class"][10]["pq"] == pytest.approx(1.0)
    assert res["per_class"][2] == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0})
    assert res["per_class"][1] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0})
    assert res["per_class"][11] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0})
    assert res["Things"] == pytest.approx({"pq": 0.375, "sq": 0.375, "rq": 0.5, "n": 2})
    assert res["Stuff"] == pytest.approx({"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2})
    assert res["All"]["n"] == 4 and res["All"]["pq"] == pytest.approx(0.4375)


def test_void_and_crowd_predictions_are_ignored():
    gt = np.zeros((10, 10), np.int64)
    gt[:, :5] = 1  # crowd of class 1
    gt_seg = [{"id": 1, "category_id": 1, "iscrowd": 1}]
    pred = np.zeros((10, 10), np.int64)
    pred[:, 3:10] = 2  # class 1, 20 px on crowd + 50 on VOID of 70 -> ignored
    pred[:, 0:3] = 3   # class 2 on the crowd of class 1: not its own class -> FP
    stat = PQStat()
    stat.add_image(gt, gt_seg, pred, [{"id": 2, "category_id": 1}, {"id": 3, "category_id": 2}], CATS)
    res = stat.summary(CATS)
    assert 1 not in res["per_class"]  # crowd GT is no FN, the ignored prediction no FP
    assert res["per_class"][2]["pq"] == 0.0 and stat.per_category[2].fp == 1


def test_ground_truth_as_prediction_scores_one(tmp_path):
    rng = np.random.default_rng(0)
    images = [_random_gt(rng) for _ in range(5)]
    gt_json, gt_dir = _write_set(str(tmp_path), "gt", images)
    res = pq_compute(gt_json, gt_json, gt_dir, gt_dir)
    for split in ("All", "Things", "Stuff"):
        assert res[split]["pq"] == pytest.approx(1.0)
        assert res[split]["sq"] == pytest.approx(1.0)
        assert res[split]["rq"] == pytest.approx(1.0)
    assert res["Stuff"]["n"] == 2 and res["All"]["n"] == res["Things"]["n"] + 2


def test_bad_predictions_raise_clear_errors():
    gt = np.ones((4, 4), np.int64)
    seg = [{"id": 1, "category_id": 10, "iscrowd": 0}]
    with pytest.raises(KeyError, match="not in segments_info"):
        PQStat().add_image(gt, seg, gt * 9, [{"id": 1, "category_id": 10}], CATS)
    with pytest.raises(KeyError, match="unknown category_id"):
        PQStat().add_image(gt, seg, gt, [{"id": 1, "category_id": 99}], CATS)
    with pytest.raises(KeyError, match="absent from the PNG"):
        PQStat().add_image(gt, seg, gt, [{"id": 1, "category_id": 10}, {"id": 2, "category_id": 10}], CATS)
    with pytest.raises(ValueError, match="predicted PNG"):
        PQStat().add_image(gt, seg, gt[:2], [{"id": 1, "category_id": 10}], CATS)


def test_matches_official_pq_compute(tmp_path):
    evaluation = pytest.importorskip(
        "panopticapi.evaluation", reason="the official panopticapi (PyPI panopticapi-lite) is not installed"
    )
    rng = np.random.default_rng(1)
    gts, preds = [], []
    for _ in range(12):
        gt_ids, gt_seg = _random_gt(rng)
        gts.append((gt_ids, gt_seg))
        preds.append(_random_pred(rng, gt_ids, gt_seg))
    gt_json, gt_dir = _write_set(str(tmp_path), "gt", gts)
    pred_json, pred_dir = _write_set(str(tmp_path), "pred", preds)
    ours = pq_compute(gt_json, pred_json, gt_dir, pred_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        official = evaluation.pq_compute(gt_json, pred_json, gt_dir, pred_dir)
    for split in ("All", "Things", "Stuff"):
        assert ours[split]["n"] == official[split]["n"]
        for key in ("pq", "sq", "rq"):
            assert ours[split][key] == pytest.approx(official[split][key], abs=1e-12), (split, key)
    # the random case must exercise partial credit, not only perfect or empty matches
    assert 0.2 < ours["All"]["pq"] < 0.95


def test_evaluator_writes_results_format(tmp_path):
    rng = np.random.default_rng(2)
    images = [_random_gt(rng) for _ in range(3)]
    gt_json, gt_dir = _write_set(str(tmp_path), "gt", images)
    out = os.path.join(str(tmp_path), "panoptic_eval")
    evaluator = PanopticEvaluator(gt_json, gt_dir, out)
    for image_id, (ids, segments) in enumerate(images):
        pred_seg = [{k: s[k] for k in ("id", "category_id")} for s in segments]
        evaluator.update([{"png_string": png_bytes(ids), "segments_info": pred_seg, "image_id": image_id}])
    evaluator.synchronize_between_processes()
    res = evaluator.summarize()
    with open(os.path.join(out, "predictions.json")) as f:
        written = json.load(f)
    assert sorted(a["image_id"] for a in written["annotations"]) == [0, 1, 2]
    assert all(os.path.isfile(os.path.join(out, a["file_name"])) for a in written["annotations"])
    # crowd GT submitted as an ordinary segment is ignored, so PQ is still 1
    assert res["All"]["pq"] == pytest.approx(1.0)
    # the written results score the same through the file-based function
    assert pq_compute(gt_json, os.path.join(out, "predictions.json"), gt_dir, out)["All"] == res["All"]


def test_two_ranks_merge_to_the_one_rank_result(tmp_path, monkeypatch):
    """DistributedSampler pads the last rank with the first images again: an image evaluated on two
    ranks (or twice on one) counts once, as in a single-process evaluation."""
    import datasets.panoptic_eval as panoptic_eval_module

    rng = np.random.default_rng(3)
    gts = [_random_gt(rng) for _ in range(5)]
    preds = [_random_pred(rng, ids, seg) for ids, seg in gts]
    gt_json, gt_dir = _write_set(str(tmp_path), "gt", gts)

    def evaluate(image_ids):
        ev = PanopticEvaluator(gt_json, gt_dir)
        for i in image_ids:
            ids, seg = preds[i]
            ev.update([{"png_string": png_bytes(ids), "segments_info": seg, "image_id": i}])
        return ev

    single = evaluate(range(5))
    single.synchronize_between_processes()
    expected = single.summarize()
    rank0, rank1 = evaluate([0, 1, 2]), evaluate([3, 4, 0, 0])
    sent_by_rank1 = []
    monkeypatch.setattr(panoptic_eval_module, "all_gather", lambda obj: sent_by_rank1.append(obj) or [obj])
    rank1.synchronize_between_processes()
    monkeypatch.setattr(panoptic_eval_module, "all_gather", lambda obj: [obj, sent_by_rank1.pop(0)])
    rank0.synchronize_between_processes()
    merged = rank0.summarize()
    for split in ("All", "Things", "Stuff"):
        assert merged[split] == pytest.approx(expected[split]), split
    assert sorted(p["image_id"] for p in rank0.predictions) == [0, 1, 2, 3, 4]
    assert 0.2 < expected["All"]["pq"] < 0.95  # partial credit: a double count would show
