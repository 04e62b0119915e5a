"""tools/demo.py: runs the config, then reports and gates on the evaluation it wrote."""
import json

import pytest

from tools import demo


def _fake_config(tmp_path, stats: dict):
    """A config script that 'trains' by writing the log and eval_stats.json a run would leave."""
    row = {"epoch": 0, "train_loss": 1.0, "test_loss": 1.0, "test_coco_eval_bbox": stats["coco_eval_bbox"],
           "train_class_error": 50.0, "test_class_error": 40.0, "train_loss_bbox_unscaled": 0.3,
           "test_loss_bbox_unscaled": 0.3}
    if "PQ_all" in stats:
        row.update(test_PQ_all=stats["PQ_all"], train_loss_dice_unscaled=0.5, test_loss_dice_unscaled=0.5)
    script = tmp_path / "config.sh"
    script.write_text(
        '#!/bin/sh\nset -e\nmkdir -p "$EXP_DIR"\n'
        f"echo '{json.dumps(row)}' > \"$EXP_DIR/log.txt\"\n"
        f"echo '{json.dumps(stats)}' > \"$EXP_DIR/eval_stats.json\"\n")
    return script


@pytest.fixture(autouse=True)
def _no_drawing(monkeypatch):
    monkeypatch.setattr("tools.visualize.main", lambda argv: None)


def _bbox(ap50):
    return [0.2, ap50] + [0.1] * 10


@pytest.mark.parametrize("pq, min_pq, code", [(0.52, 0.3, 0), (0.2, 0.3, 1)])
def test_panoptic_run_gates_on_pq(tmp_path, pq, min_pq, code):
    stats = {"coco_eval_bbox": _bbox(0.5),
             "PQ_all": {"pq": pq, "sq": 0.8, "rq": 0.6, "n": 8},
             "PQ_th": {"pq": pq / 2, "sq": 0.7, "rq": 0.4, "n": 5},
             "PQ_st": {"pq": 0.8, "sq": 0.9, "rq": 0.9, "n": 3}}
    out = tmp_path / "run"
    argv = ["--config", str(_fake_config(tmp_path, stats)), "--output_dir", str(out), "--min_ap50", "0.3",
            "--min_pq", str(min_pq)]
    assert demo.main(argv) == code
    summary = json.loads((out / "summary.json").read_text())
    assert summary["PQ"] == pq and summary["PQ_things"] == pq / 2 and summary["PQ_stuff"] == 0.8
    assert (out / "plots.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("ap50, code", [(0.77, 0), (0.4, 1)])
def test_detection_run_gates_on_ap50_only(tmp_path, ap50, code):
    out = tmp_path / "run"
    config = _fake_config(tmp_path, {"coco_eval_bbox": _bbox(ap50)})
    argv = ["--config", str(config), "--output_dir", str(out), "--min_pq", "0.9"]
    assert demo.main(argv) == code
    assert "PQ" not in json.loads((out / "summary.json").read_text())
