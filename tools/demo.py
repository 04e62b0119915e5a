"""`make demo` / `make demo-panoptic`: train and evaluate on a toy set, then plot the log and draw
detections.

    python tools/demo.py [--config configs/toy_demo.sh] [--output_dir exps/demo] [--min_ap50 0.5]
                         [--min_pq 0.3]

The training flags live in the config script; this runs it, then writes to the output folder
``plots.png`` (the log's curves), ``detections/*.png`` (validation images with the detections
drawn) and ``summary.json`` (wall time, AP, AP@0.5, and PQ for a panoptic run). It fails if AP@0.5
on the toy validation set is below ``--min_ap50``, or PQ below ``--min_pq`` when the run evaluated
PQ: the demo is meant to show a model that really learned.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "toy_demo.sh"), help="training config script")
    p.add_argument("--output_dir", default="exps/demo", help="where the run writes everything")
    p.add_argument("--min_ap50", type=float, default=0.5, help="fail below this AP@0.5 on the toy val set")
    p.add_argument("--min_pq", type=float, default=0.3, help="fail below this PQ (panoptic runs)")
    p.add_argument("--num_images", type=int, default=4, help="validation images to draw")
    # After four epochs the focal-loss scores of correct detections are mostly 0.3-0.6: at 0.5
    # most drawn images would be empty although AP@0.5 is high.
    p.add_argument("--threshold", type=float, default=0.3, help="score threshold of the drawn detections")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="flags after -- go to the config (main.py)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    start = time.time()
    out = Path(opts.output_dir)
    for stale in ("log.txt", "checkpoint.pth", "eval_stats.json"):
        # main.py appends to log.txt; an old run's lines must not end up in this demo's plots.
        (out / stale).unlink(missing_ok=True)
    extra = opts.extra[1:] if opts.extra[:1] == ["--"] else opts.extra
    env = {**os.environ, "EXP_DIR": str(out)}
    print(f"== training: {opts.config} {' '.join(extra)}", flush=True)
    subprocess.run(["sh", opts.config, *extra], env=env, check=True)
    train_s = time.time() - start

    from util.plot_utils import plot_logs

    eval_stats = json.loads((out / "eval_stats.json").read_text())
    pq = eval_stats.get("PQ_all", {}).get("pq")
    print("== plotting the log", flush=True)
    fields = ("loss", "class_error", "loss_bbox_unscaled", "mAP")
    if pq is not None:
        fields += ("loss_dice_unscaled", "PQ")
    plot_logs([out], fields=fields, out=out / "plots.png")

    print("== drawing detections", flush=True)
    from tools.visualize import main as visualize

    visualize([str(out / "checkpoint.pth"), "--num_images", str(opts.num_images),
               "--threshold", str(opts.threshold), "--output_dir", str(out / "detections")])

    stats = eval_stats["coco_eval_bbox"]
    wall = time.time() - start
    summary = {"wall_time_s": round(wall, 1), "train_and_eval_s": round(train_s, 1),
               "AP": stats[0], "AP50": stats[1], "AP75": stats[2]}
    outcome = f"AP {stats[0]:.3f}, AP@0.5 {stats[1]:.3f}"
    if pq is not None:
        summary.update(PQ=pq, PQ_things=eval_stats["PQ_th"]["pq"], PQ_stuff=eval_stats["PQ_st"]["pq"])
        outcome += f", PQ {pq:.3f} (things {summary['PQ_things']:.3f}, stuff {summary['PQ_stuff']:.3f})"
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"== demo done in {wall:.0f} s: {outcome} on the toy val set; outputs in {out}/ "
          "(log.txt, checkpoint.pth, eval_stats.json, plots.png, detections/)", flush=True)
    failed = [f"AP@0.5 {stats[1]:.3f} < {opts.min_ap50}"] if stats[1] < opts.min_ap50 else []
    if pq is not None and pq < opts.min_pq:
        failed.append(f"PQ {pq:.3f} < {opts.min_pq}")
    if failed:
        print(f"demo FAILED: {'; '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
