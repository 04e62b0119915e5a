"""`make demo-longtail`: BatchFormer on long-tailed real digits, base against +BatchFormer, paired by seed.

    python tools/demo_longtail.py [--seeds 5] [--ratios 10 50] [--models cnn vit]
                                  [--epochs_cnn 30 100] [--epochs_vit 100] [--output_dir exps/demo_longtail]

Data: ``datasets/longtail_digits.py`` (scikit-learn's 8x8 digits, exponential long-tailed train split,
balanced test split). Models: a small CNN whose 64-d features go through BatchFormer (V1) before a
shared linear classifier, and a 4-block ViT on 2x2 patches with BatchFormerV2 after block 0. For every
seed, the base and the +BatchFormer run share the data split, the initial weights of every shared
parameter, the batch order and the augmentation; the only difference is the BatchFormer. Test accuracy
after the last epoch (no model selection on the test split). The +BatchFormer model is also evaluated
with its two streams' logits averaged ("+BF avg", an ablation; the papers' test skips the BatchFormer).

Writes ``results.json`` (every run), ``summary.json`` (means, paired differences) and
``longtail.png`` to the output folder, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datasets.longtail_digits import NUM_CLASSES, group_accuracy, make_longtail_digits  # noqa: E402
from models.batchformer import batchformer_param_groups  # noqa: E402
from models.batchformer_plugin import BatchFormerClassifier  # noqa: E402
from models.batchformer_vit import TinyViT  # noqa: E402

GROUPS = ("All", "Many", "Medium", "Few")
FEATURE_DIM = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1; each trains base and +BatchFormer")
    p.add_argument("--ratios", type=float, nargs="+", default=[10.0, 50.0], help="imbalance ratios")
    p.add_argument("--models", nargs="+", default=["cnn", "vit"], choices=("cnn", "vit"))
    p.add_argument("--epochs_cnn", type=int, nargs="+", default=[30, 100],
                   help="one setting per value: a short schedule and one where the base's loss has converged")
    p.add_argument("--epochs_vit", type=int, nargs="+", default=[100])
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup_epochs", type=float, default=5.0,
                   help="linear warm-up before the cosine decay (the ViT collapses to one class without it)")
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the runs are tiny)")
    p.add_argument("--output_dir", default="exps/demo_longtail")
    args = p.parse_args(argv)
    for name in ("seeds", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("epochs_cnn", "epochs_vit"):
        if min(getattr(args, name)) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup_epochs < 0:
        p.error(f"--warmup_epochs must be at least 0, got {args.warmup_epochs}")
    if any(r < 1 for r in args.ratios):
        p.error(f"--ratios must be at least 1, got {args.ratios}")
    return args


def cnn_backbone() -> nn.Module:
    """(N, 1, 8, 8) -> (N, 64) features. No batch norm: the BatchFormer is then the only place where
    samples of a batch meet."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 2 * 2, FEATURE_DIM), nn.ReLU(),
    )


class PlainClassifier(nn.Module):
    """backbone + classifier with the (logits, labels) interface of BatchFormerClassifier."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        return self.classifier(self.backbone(images)), labels


def build(model: str, with_bf: bool, seed: int) -> nn.Module:
    """The network of ``model``; the shared weights are drawn first, so both variants start equal."""
    torch.manual_seed(seed)
    if model == "vit":
        return TinyViT(num_classes=NUM_CLASSES, dim=FEATURE_DIM, depth=4, heads=4, bf=with_bf, insert_idx=0)
    backbone, classifier = cnn_backbone(), nn.Linear(FEATURE_DIM, NUM_CLASSES)
    if not with_bf:
        return PlainClassifier(backbone, classifier)
    return BatchFormerClassifier(backbone, classifier, FEATURE_DIM)


def random_shift(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each image (N, 1, 8, 8) moved by -1, 0 or +1 pixel in x and y, zero-filled."""
    n, _, h, w = images.shape
    padded = F.pad(images, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=generator)
    dx = torch.randint(0, 3, (n,), generator=generator)
    out = torch.empty_like(images)
    for oy in range(3):
        for ox in range(3):
            sel = (dy == oy) & (dx == ox)
            out[sel] = padded[sel, :, oy:oy + h, ox:ox + w]
    return out


def train(net: nn.Module, images: Tensor, labels: Tensor, epochs: int, args, seed: int) -> float:
    """AdamW, linear warm-up then cosine decay per step; cross-entropy over every row the model returns
    (both streams). Returns the last epoch's mean training loss."""
    groups = batchformer_param_groups(net, args.lr, args.weight_decay)
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
    steps_per_epoch = len(images) // args.batch_size
    total = epochs * steps_per_epoch
    warmup = min(int(args.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    data_rng = torch.Generator().manual_seed(seed)  # same batches and shifts for both variants
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=data_rng)
        epoch_loss = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            logits, targets = net(random_shift(images[idx], data_rng), labels[idx])
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.item()
    return epoch_loss / steps_per_epoch


@torch.no_grad()
def predict(net: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """Predicted classes (N,), in batches of the training size taken in a fixed shuffled order, so that
    an evaluation that looks across the batch ("average") sees mixed classes as in training."""
    net.eval()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    out = torch.empty(len(images), dtype=torch.long)
    for start in range(0, len(images), batch_size):
        idx = order[start:start + batch_size]
        out[idx] = net(images[idx])[0].argmax(1)
    return out


def run_one(model: str, ratio: float, seed: int, epochs: int, args) -> list[dict]:
    """Base and +BatchFormer on one split; one result row per evaluated variant."""
    split = make_longtail_digits(ratio, seed)
    if len(split.train_labels) < args.batch_size:
        raise SystemExit(f"demo_longtail.py: error: --batch_size {args.batch_size} exceeds the "
                         f"{len(split.train_labels)} training images at imbalance ratio {ratio:g}")
    rows = []
    for with_bf in (False, True):
        net = build(model, with_bf, seed)
        start = time.time()
        loss = train(net, split.train_images, split.train_labels, epochs, args, seed)
        seconds = time.time() - start
        variants = [("+BF" if with_bf else "base", net)]
        if with_bf and isinstance(net, BatchFormerClassifier):
            variants.append(("+BF avg", net))
        for name, variant in variants:
            if name == "+BF avg":
                variant.eval_mode = "average"
            acc = group_accuracy(predict(variant, split.test_images, args.batch_size), split.test_labels,
                                 split.groups)
            rows.append({"model": model, "ratio": ratio, "seed": seed, "variant": name, "epochs": epochs,
                         "train_loss": loss, "train_seconds": seconds, "counts": split.counts, **acc})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per setting (model, ratio, epochs): mean accuracy of each variant, and the paired
    (+BF - base) differences over seeds (mean, sample std, seeds better / worse, each seed's)."""
    out = []
    for setting in dict.fromkeys((r["model"], r["ratio"], r["epochs"]) for r in rows):
        sel = [r for r in rows if (r["model"], r["ratio"], r["epochs"]) == setting]
        seeds = sorted({r["seed"] for r in sel})
        entry = {"model": setting[0], "ratio": setting[1], "epochs": setting[2], "seeds": len(seeds),
                 "mean": {}, "diff": {}}
        by_seed = {(r["seed"], r["variant"]): r for r in sel}
        for variant in dict.fromkeys(r["variant"] for r in sel):
            entry["mean"][variant] = {g: statistics.fmean(r[g] for r in sel if r["variant"] == variant)
                                      for g in GROUPS}
            if variant == "base":
                continue
            diffs = {g: [by_seed[(s, variant)][g] - by_seed[(s, "base")][g] for s in seeds] for g in GROUPS}
            entry["diff"][variant] = {
                g: {"mean": statistics.fmean(d), "std": statistics.stdev(d) if len(d) > 1 else 0.0,
                    "wins": sum(x > 0 for x in d), "losses": sum(x < 0 for x in d), "per_seed": d}
                for g, d in diffs.items()}
        out.append(entry)
    return out


def format_tables(summary: list[dict]) -> str:
    lines = []
    for e in summary:
        lines.append(f"\n{e['model'].upper()}, imbalance ratio {e['ratio']:g}, {e['epochs']} epochs, "
                     f"{e['seeds']} seeds: test accuracy (%), mean over seeds")
        lines.append(f"{'':<22}" + "".join(f"{g:>16}" for g in GROUPS))
        for variant, acc in e["mean"].items():
            lines.append(f"{variant:<22}" + "".join(f"{acc[g]:>16.1f}" for g in GROUPS))
        for variant, diff in e["diff"].items():
            label = f"{variant} - base"
            lines.append(f"{label:<22}" + "".join(
                f"{diff[g]['mean']:>+9.1f} ± {diff[g]['std']:<4.1f}" for g in GROUPS))
            lines.append(f"{'  seeds +/-':<22}" + "".join(
                f"{str(diff[g]['wins']) + '/' + str(diff[g]['losses']):>16}" for g in GROUPS))
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> None:
    """Top row: mean accuracy per group (base, +BF); bottom row: paired difference ± std, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(summary), figsize=(3.6 * len(summary), 6.2), squeeze=False)
    xs = range(len(GROUPS))
    for col, e in enumerate(summary):
        top, bottom = axes[0][col], axes[1][col]
        for k, variant in enumerate(("base", "+BF")):
            top.bar([x + (k - 0.5) * 0.38 for x in xs], [e["mean"][variant][g] for g in GROUPS], 0.38,
                    label=variant)
        top.set_title(f"{e['model'].upper()}, ratio {e['ratio']:g}, {e['epochs']} ep", fontsize=9)
        top.set_xticks(list(xs), GROUPS)
        top.set_ylim(0, 100)
        diff = e["diff"]["+BF"]
        bottom.bar(xs, [diff[g]["mean"] for g in GROUPS], 0.6, yerr=[diff[g]["std"] for g in GROUPS],
                   capsize=3, color="tab:green")
        for x, g in zip(xs, GROUPS):
            bottom.plot([x] * len(diff[g]["per_seed"]), diff[g]["per_seed"], "k.", ms=4)
        bottom.axhline(0, color="k", lw=0.6)
        bottom.set_xticks(list(xs), GROUPS)
        if col == 0:
            top.set_ylabel("test accuracy (%)")
            bottom.set_ylabel("+BF - base (points)")
            top.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, rows = time.time(), []
    for model in args.models:
        for epochs in args.epochs_vit if model == "vit" else args.epochs_cnn:
            for ratio in args.ratios:
                for seed in range(args.seeds):
                    new = run_one(model, ratio, seed, epochs, args)
                    rows.extend(new)
                    (out_dir / "results.json").write_text(json.dumps(rows, indent=1))  # kept if stopped
                    print(f"{model} {epochs} epochs ratio {ratio:g} seed {seed}: All accuracy (%) "
                          + ", ".join(f"{r['variant']} {r['All']:.1f}" for r in new), flush=True)
    summary = summarise(rows)
    wall = time.time() - start
    (out_dir / "summary.json").write_text(json.dumps({"wall_seconds": wall, "args": vars(args),
                                                      "summary": summary}, indent=1))
    plot(summary, out_dir / "longtail.png")
    print(format_tables(summary))
    print(f"\n{len(rows)} evaluations in {wall / 60:.1f} min; wrote {out_dir}/results.json, summary.json, "
          "longtail.png", flush=True)
    return summary


if __name__ == "__main__":
    main()
