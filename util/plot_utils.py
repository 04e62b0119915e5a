"""Training curves from the `log.txt` files that main.py writes (one JSON object per epoch).

Drawn with matplotlib's Agg backend, so they work on machines without a display.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

# Evaluation-only fields: the log key of each and where its number sits. The 12 COCOeval stats are
# logged as one list, mAP is its first entry (AP at IoU .50:.95); PQ is the "pq" of the panoptic
# quality over all classes.
TEST_ONLY_FIELDS: dict[str, tuple[str, int | str]] = {
    "mAP": ("test_coco_eval_bbox", 0),
    "PQ": ("test_PQ_all", "pq"),
}


def read_log(path: Path) -> list[dict]:
    """The JSON lines of one log file, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plot_logs: no log file at {path} (main.py writes log.txt in --output_dir)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"plot_logs: {path} line {n} is not a JSON object: {e}") from e
        if not isinstance(row, dict):
            raise ValueError(f"plot_logs: {path} line {n} is not a JSON object")
        rows.append(row)
    if not rows:
        raise ValueError(f"plot_logs: {path} has no log lines")
    return rows


def ewm(values: Sequence[float], com: float) -> list[float]:
    """Exponentially weighted mean with centre of mass `com` (0 = the values themselves).

    Weights (1 - a)^k for the value k steps back, a = 1 / (1 + com), normalised by their sum.
    """
    if com < 0:
        raise ValueError(f"ewm: centre of mass must be >= 0, got {com}")
    decay = 1 - 1 / (1 + com)
    out, num, den = [], 0.0, 0.0
    for v in values:
        num = num * decay + v
        den = den * decay + 1
        out.append(num / den)
    return out


def _series(rows: list[dict], key: str,
            index: int | str | None = None) -> tuple[list[float], list[float]]:
    """(epochs, values) of a key across the log, skipping epochs where it is absent or not finite."""
    epochs, values = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        if value is None:
            continue
        if index is not None:
            value = value[index]
        if not math.isfinite(float(value)):
            continue
        epochs.append(row.get("epoch", i))
        values.append(float(value))
    return epochs, values


def _plottable(rows: list[dict]) -> set[str]:
    """The fields a log can draw: numbers logged as ``train_<field>`` or ``test_<field>``, and the
    TEST_ONLY_FIELDS whose entry it has."""
    fields = set()
    for row in rows:
        for key, value in row.items():
            split, _, field = key.partition("_")
            if split in ("train", "test") and isinstance(value, (int, float)):
                fields.add(field)
    fields.update(name for name, (key, _) in TEST_ONLY_FIELDS.items() if any(key in row for row in rows))
    return fields


def _check_fields(fields: Sequence[str], available: set[str], files: list[Path]) -> None:
    """A field no log has would be an empty panel: name it, and what could be drawn instead."""
    missing = [f for f in fields if f not in available]
    if missing:
        read = ", ".join(map(str, files))
        raise ValueError(f"plot_logs: no log has the field(s) {', '.join(missing)} ({read}); the fields "
                         f"there are: {', '.join(sorted(available))}")


DEFAULT_FIELDS = ("class_error", "loss_bbox_unscaled", "mAP")


def plot_logs(logs: Sequence[Path] | Path, fields: Sequence[str] | None = None,
              ewm_col: float = 0, log_name: str = "log.txt", out: Path | None = None):
    """One subplot per field: train (solid) and test (dashed) curves of every run in `logs`.

    logs: run folders (each holding `log_name`) or log files. fields: default DEFAULT_FIELDS (the public
    code's), those of them the logs have; a field asked for that no log has is an error naming the
    fields there are. `mAP` (the first COCO stat) and `PQ` have test curves only.
    Writes the figure to `out` (PNG) if given; returns (figure, axes).
    """
    if isinstance(logs, (str, Path)):
        logs = [logs]
    if not logs:
        raise ValueError("plot_logs: no logs given")
    if fields is not None and not fields:
        raise ValueError("plot_logs: no fields given")
    runs, files = [], []
    for log in logs:
        log = Path(log)
        files.append(log / log_name if log.is_dir() else log)
        runs.append((log, read_log(files[-1])))

    available = set().union(*(_plottable(rows) for _, rows in runs))
    if fields is None:
        fields = [f for f in DEFAULT_FIELDS if f in available] or DEFAULT_FIELDS
    _check_fields(fields, available, files)
    fig, axes = plt.subplots(1, len(fields), figsize=(5 * len(fields), 4), squeeze=False)
    axes = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, (log, rows) in enumerate(runs):
        color = colors[r % len(colors)]
        name = log.name if log.is_dir() else log.parent.name or log.name
        for ax, field in zip(axes, fields):
            curves = ([("test", _series(rows, *TEST_ONLY_FIELDS[field]))] if field in TEST_ONLY_FIELDS else
                      [("train", _series(rows, f"train_{field}")), ("test", _series(rows, f"test_{field}"))])
            for split, (epochs, values) in curves:
                if not values:
                    continue
                style = "-" if split == "train" else "--"
                ax.plot(epochs, ewm(values, ewm_col), style, color=color, label=f"{name} {split}")
    for ax, field in zip(axes, fields):
        ax.set_title(field)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    return fig, axes
