import json

import pytest

from util.plot_utils import ewm, plot_logs, read_log

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_log(folder, epochs=4):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for e in range(epochs):
        lines.append(json.dumps({
            "train_class_error": 50.0 / (e + 1), "test_class_error": 60.0 / (e + 1),
            "train_loss_bbox_unscaled": 0.3 - 0.05 * e, "test_loss_bbox_unscaled": 0.35 - 0.05 * e,
            "test_coco_eval_bbox": [0.1 * e] + [0.0] * 11, "epoch": e, "n_parameters": 10,
            "test_PQ_all": {"pq": 0.2 * e, "sq": 0.5, "rq": 0.4 * e, "n": 8},
        }))
    (folder / "log.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_plot_logs_writes_png(tmp_path):
    run_a = _write_log(tmp_path / "run_a")
    run_b = _write_log(tmp_path / "run_b", epochs=2)
    out = tmp_path / "plots" / "curves.png"
    fig, axes = plot_logs([run_a, run_b / "log.txt"], ewm_col=1, out=out)
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert [ax.get_title() for ax in axes] == ["class_error", "loss_bbox_unscaled", "mAP"]
    # Two runs: train + test for the first two fields, test only for mAP.
    assert [len(ax.lines) for ax in axes] == [4, 4, 2]
    xs, ys = axes[2].lines[0].get_data()
    assert list(xs) == [0, 1, 2, 3]
    assert list(ys) == pytest.approx(ewm([0.0, 0.1, 0.2, 0.3], 1))


def test_plot_logs_panoptic_quality(tmp_path):
    _, axes = plot_logs([_write_log(tmp_path / "run")], fields=("PQ",))
    assert len(axes[0].lines) == 1  # test only
    assert list(axes[0].lines[0].get_data()[1]) == pytest.approx([0.0, 0.2, 0.4, 0.6])


def test_ewm_against_weighted_mean():
    values = [1.0, 4.0, 2.0, 8.0]
    assert ewm(values, 0) == values
    a = 1 / (1 + 2.0)
    for t in range(len(values)):
        weights = [(1 - a) ** (t - i) for i in range(t + 1)]
        expected = sum(w * v for w, v in zip(weights, values)) / sum(weights)
        assert ewm(values, 2.0)[t] == pytest.approx(expected)


def test_missing_and_invalid_logs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no log file at .*nothing"):
        plot_logs([tmp_path / "nothing"], out=tmp_path / "x.png")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "log.txt").write_text('{"epoch": 0}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        plot_logs([bad])
    (bad / "log.txt").write_text("")
    with pytest.raises(ValueError, match="no log lines"):
        read_log(bad / "log.txt")
    assert not (tmp_path / "x.png").exists()


def test_a_field_no_log_has_is_named_with_the_fields_there_are(tmp_path):
    run = _write_log(tmp_path / "run")
    with pytest.raises(ValueError) as info:
        plot_logs([run], fields=("class_error", "nonexistent_field"), out=tmp_path / "x.png")
    message = str(info.value)
    assert "nonexistent_field" in message and str(run / "log.txt") in message
    available = message.split("fields there are: ")[1]
    # Numbers only: test_coco_eval_bbox (a list of 12 stats) is drawn as mAP, test_PQ_all as PQ.
    assert available.split(", ") == ["PQ", "class_error", "loss_bbox_unscaled", "mAP"]
    assert not (tmp_path / "x.png").exists()
    # A field one run logs is drawn for it, and not refused for the run that lacks it.
    other = tmp_path / "other"
    other.mkdir()
    (other / "log.txt").write_text(json.dumps({"train_loss": 1.0, "epoch": 0}) + "\n")
    _, axes = plot_logs([run, other], fields=("loss", "class_error"))
    assert [len(ax.lines) for ax in axes] == [1, 2]


def test_the_default_fields_are_those_the_logs_have(tmp_path):
    """A run without evaluation (--eval_every 0) logs no mAP: the default panels leave it out, unasked."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text(json.dumps({"train_class_error": 5.0, "train_loss_bbox_unscaled": 0.2,
                                             "epoch": 0}) + "\n")
    _, axes = plot_logs([run])
    assert [ax.get_title() for ax in axes] == ["class_error", "loss_bbox_unscaled"]
