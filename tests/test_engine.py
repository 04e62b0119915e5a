"""engine.py with a stand-in model: clipping, iteration limit, non-finite losses, amp, COCO evaluation,
the log keys, the progress lines and the unused-parameter check."""
import json
import re

import pytest
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from torch import nn

from engine import NonFiniteLossError, UnusedParametersError, evaluate, to_float32, train_one_epoch
from util.misc import NestedTensor


class _Model(nn.Module):
    """pred = x @ W for x the per-image channel means; also echoes the image id painted in the pixels."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.calls = 0

    def forward(self, samples: NestedTensor) -> dict:
        self.calls += 1
        x = samples.tensors.mean(dim=(2, 3))
        return {"pred": self.lin(x), "ids": samples.tensors[:, 0, 0, 0]}


class _Criterion(nn.Module):
    weight_dict = {"loss_a": 1.0, "loss_b": 2.0}

    def __init__(self, bad_call: int = -1):
        super().__init__()
        self.bad_call = bad_call
        self.calls = 0
        self.dtypes = []

    def forward(self, outputs, targets):
        self.calls += 1
        self.dtypes.append(outputs["pred"].dtype)
        pred = outputs["pred"]
        goal = torch.stack([t["goal"] for t in targets])
        loss_b = (pred - goal).abs().mean()
        if self.calls == self.bad_call:
            loss_b = loss_b * float("inf")
        return {"loss_a": (pred - goal).pow(2).mean(), "loss_b": loss_b, "class_error": torch.tensor(12.5)}


def _loader(n_batches: int, batch: int = 2, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n_batches):
        images = torch.randn(batch, 3, 8, 8, generator=g) * 10
        targets = tuple({"goal": torch.randn(2, generator=g)} for _ in range(batch))
        data.append((NestedTensor(images, torch.zeros(batch, 8, 8, dtype=torch.bool)), targets))
    return data


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_clipping_bounds_the_step_and_reports_the_unclipped_norm():
    model, crit = _Model(), _Criterion()
    loader = _loader(1)
    # The gradient norm computed independently, before any update.
    samples, targets = loader[0]
    out = crit(model(samples), targets)
    (out["loss_a"] + 2 * out["loss_b"]).backward()
    expected_norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    model.zero_grad()
    before = _flat(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    stats = train_one_epoch(model, crit, loader, opt, torch.device("cpu"), 0, max_norm=0.01)
    assert expected_norm > 0.1
    assert stats["grad_norm"] == pytest.approx(expected_norm, rel=1e-5)
    assert (_flat(model) - before).norm().item() == pytest.approx(0.01, rel=1e-4)
    assert stats["loss"] == pytest.approx(out["loss_a"].item() + 2 * out["loss_b"].item(), rel=1e-5)
    assert stats["class_error"] == 12.5 and stats["lr"] == 1.0


def test_max_iters_limits_the_epoch():
    model, crit = _Model(), _Criterion()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, crit, _loader(5), opt, torch.device("cpu"), 0, max_iters=2)
    assert model.calls == 2
    train_one_epoch(model, crit, _loader(5), opt, torch.device("cpu"), 1)
    assert model.calls == 7


def test_non_finite_loss_stops_before_the_update_and_names_the_term():
    model, crit = _Model(), _Criterion(bad_call=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = _loader(3)
    reference = _Model()
    reference.load_state_dict(model.state_dict())
    with pytest.raises(NonFiniteLossError, match=r"loss_b=inf"):
        train_one_epoch(model, crit, loader, opt, torch.device("cpu"), 0)
    # Exactly one good step was taken: the same as training on the first batch alone.
    train_one_epoch(reference, _Criterion(), loader[:1], torch.optim.SGD(reference.parameters(), lr=0.1),
                    torch.device("cpu"), 0)
    assert torch.equal(_flat(model), _flat(reference))


def test_amp_bf16_runs_forward_in_bfloat16_and_losses_in_float32():
    model, crit = _Model(), _Criterion()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = train_one_epoch(model, crit, _loader(2), opt, torch.device("cpu"), 0, amp="bf16")
    assert crit.dtypes == [torch.float32, torch.float32]
    assert torch.isfinite(torch.tensor(stats["loss"]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model(_loader(1)[0][0])
    assert raw["pred"].dtype == torch.bfloat16
    assert to_float32({"a": [raw["pred"]], "n": 3})["a"][0].dtype == torch.float32


def test_amp_fp16_uses_the_grad_scaler():
    model, crit = _Model(), _Criterion()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = _flat(model)
    train_one_epoch(model, crit, _loader(2), opt, torch.device("cpu"), 0, amp="fp16", scaler=scaler)
    assert not torch.equal(before, _flat(model))
    assert torch.isfinite(_flat(model)).all()


def _coco_gt() -> COCO:
    images = [{"id": i, "width": 100, "height": 80, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    boxes = {1: [[10, 10, 30, 20]], 2: [[50, 40, 20, 30], [5, 5, 10, 10]], 3: [[0, 0, 60, 60]]}
    anns, k = [], 1
    for image_id, bs in boxes.items():
        for b in bs:
            anns.append({"id": k, "image_id": image_id, "category_id": 1 + k % 2, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0})
            k += 1
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    coco.createIndex()
    return coco


def test_evaluate_gives_perfect_ap_for_ground_truth_detections():
    coco = _coco_gt()
    stats, evaluator = evaluate(_Model(), _Criterion(), {"bbox": _gt_postprocess(coco)},
                                _id_batches(([1, 2], [3])), coco, torch.device("cpu"))
    assert len(stats["coco_eval_bbox"]) == 12
    assert stats["coco_eval_bbox"][0] == pytest.approx(1.0)
    assert stats["coco_eval_bbox"][1] == pytest.approx(1.0)
    assert "loss" in stats and "loss_a_unscaled" in stats and "loss_b" in stats
    assert sorted({r["image_id"] for r in evaluator.coco_results("bbox")}) == [1, 2, 3]


def _gt_with_polygons() -> COCO:
    coco = _coco_gt()
    for ann in coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    coco.createIndex()
    return coco


def _gt_postprocess(coco: COCO):
    def postprocess(outputs, target_sizes):
        results = []
        for image_id in outputs["ids"].round().long().tolist():
            anns = coco.imgToAnns[image_id]
            boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                   a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32)
            results.append({"scores": torch.full((len(anns),), 0.9),
                            "labels": torch.tensor([a["category_id"] for a in anns]), "boxes": boxes})
        return results

    return postprocess


def _id_batches(ids_per_batch) -> list:
    batches = []
    for ids in ids_per_batch:
        images = torch.zeros(len(ids), 3, 8, 8)
        images[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.float32)
        size = torch.tensor([80, 100])
        targets = tuple({"goal": torch.zeros(2), "image_id": torch.tensor([i]), "orig_size": size,
                         "size": size} for i in ids)
        batches.append((NestedTensor(images, torch.zeros(len(ids), 8, 8, dtype=torch.bool)), targets))
    return batches


def test_mask_stats_are_logged_as_coco_eval_masks_like_the_public_code():
    coco = _gt_with_polygons()

    def segm(results, outputs, orig_sizes, sizes):
        for r in results:  # each box painted as its mask, at the original image size (80, 100)
            masks = torch.zeros(len(r["boxes"]), 1, 80, 100)
            for m, (x0, y0, x1, y1) in zip(masks, r["boxes"].long().tolist()):
                m[0, y0:y1, x0:x1] = 1
            r["masks"] = masks
        return results

    stats, _ = evaluate(_Model(), _Criterion(), {"bbox": _gt_postprocess(coco), "segm": segm},
                        _id_batches(([1, 2], [3])), coco, torch.device("cpu"))
    assert "coco_eval_segm" not in stats
    assert len(stats["coco_eval_masks"]) == 12 and stats["coco_eval_masks"][1] == pytest.approx(1.0)
    assert stats["coco_eval_bbox"][0] == pytest.approx(1.0)


def test_train_log_keys_are_the_public_ones():
    """`loss_b` is the weighted term and `loss_b_unscaled` the raw one, as in the public log.txt."""
    model, crit = _Model(), _Criterion()
    loader = _loader(1)
    samples, targets = loader[0]
    raw = _Criterion()(model(samples), targets)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_one_epoch(model, crit, loader, opt, torch.device("cpu"), 0)
    assert stats["loss_b"] == pytest.approx(2.0 * raw["loss_b"].item(), rel=1e-6)
    assert stats["loss_b_unscaled"] == pytest.approx(raw["loss_b"].item(), rel=1e-6)
    assert stats["loss_a"] == pytest.approx(raw["loss_a"].item(), rel=1e-6)
    assert stats["class_error_unscaled"] == 12.5
    assert not [k for k in stats if k.endswith("_scaled")]


# ---- console progress lines -------------------------------------------------------------------------

_TERMS = ("loss_ce", "loss_bbox", "loss_giou")
# The weighted terms of a 6-layer two-stage model: the last layer, five auxiliary layers, the encoder.
_SIX_LAYER_WEIGHTS = {f"{t}{s}": w for s in ["", *(f"_{i}" for i in range(5)), "_enc"]
                      for t, w in zip(_TERMS, (2.0, 5.0, 2.0))}


class _ManyTerms(nn.Module):
    """Every term of a 6-layer two-stage model, each a different function of the prediction."""

    weight_dict = _SIX_LAYER_WEIGHTS

    def forward(self, outputs, targets):
        pred = outputs["pred"]
        goal = torch.stack([t["goal"] for t in targets])
        terms = {k: (pred - goal).abs().mean() * (1 + i / 10) for i, k in enumerate(self.weight_dict)}
        return {**terms, "class_error": torch.tensor(50.0), "cardinality_error": torch.tensor(3.0)}


def _progress_lines(out: str, header: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(header) and "Total time" not in line]


def test_progress_line_is_short_and_names_the_main_terms(capsys):
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_one_epoch(model, _ManyTerms(), _loader(3), opt, torch.device("cpu"), 7, print_freq=1)
    lines = _progress_lines(capsys.readouterr().out, "Epoch: [7]")
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert len(line) < 250, line
        assert f"[{i}/3]" in line and "eta: " in line and " it/s" in line
        for name in ("lr", "loss", "loss_ce", "loss_bbox", "loss_giou", "grad_norm"):
            assert re.search(rf"\b{name}: [0-9]", line), (name, line)
        assert "loss_ce_0" not in line and "_enc" not in line and "_unscaled" not in line
    # log.txt still gets every term, weighted and raw.
    for k in _SIX_LAYER_WEIGHTS:
        assert k in stats and f"{k}_unscaled" in stats
    assert stats["loss_giou_enc"] == pytest.approx(2.0 * stats["loss_giou_enc_unscaled"])


def test_print_all_terms_prints_the_full_breakdown(capsys):
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train_one_epoch(model, _ManyTerms(), _loader(2), opt, torch.device("cpu"), 0, print_freq=1,
                    print_all_terms=True)
    out = capsys.readouterr().out
    line = _progress_lines(out, "Epoch: [0]")[0]
    for k in _SIX_LAYER_WEIGHTS:
        assert f"{k}: " in line and f"{k}_unscaled: " in line
    assert "cardinality_error_unscaled: " in line and "data: " in line


def test_evaluation_progress_is_short_by_default(capsys):
    coco = _coco_gt()
    evaluate(_Model(), _ManyTerms(), {"bbox": _gt_postprocess(coco)}, _id_batches(([1, 2], [3])), coco,
             torch.device("cpu"), print_freq=1)
    out = capsys.readouterr().out
    lines = _progress_lines(out, "Test:")
    assert len(lines) == 2 and all(len(line) < 250 and "loss_ce: " in line for line in lines), lines
    averaged = [line for line in out.splitlines() if line.startswith("Averaged stats")]
    assert averaged and all(len(line) < 250 for line in averaged)


# ---- --amp fp16: skipped steps ----------------------------------------------------------------------

class _BadCriterion(_Criterion):
    """loss_b is inf on the calls listed (1-based)."""

    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls = set(bad_calls)

    def forward(self, outputs, targets):
        out = super().forward(outputs, targets)
        if self.calls in self.bad_calls:
            out["loss_b"] = out["loss_b"] * float("inf")
        return out


def test_fp16_skips_a_step_whose_loss_is_not_finite_and_goes_on(capsys):
    loader = _loader(3)
    model = _Model()
    reference = _Model()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    stats = train_one_epoch(model, _BadCriterion({2}), loader, opt, torch.device("cpu"), 0, amp="fp16",
                            scaler=scaler)
    assert stats["amp_skipped_steps"] == 1
    json.dumps(stats, allow_nan=False)  # log.txt stays valid JSON
    assert "skipped" in capsys.readouterr().out
    # The same weights as training on the two good batches only.
    train_one_epoch(reference, _Criterion(), [loader[0], loader[2]],
                    torch.optim.SGD(reference.parameters(), lr=0.1), torch.device("cpu"), 0, amp="fp16",
                    scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
    assert torch.allclose(_flat(model), _flat(reference), rtol=0, atol=1e-6)


def test_fp16_gradient_overflow_is_skipped_and_left_out_of_the_grad_norm():
    """A scale far too large overflows the float16 gradients: GradScaler halves it until they fit."""
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30)
    before = _flat(model)
    stats = train_one_epoch(model, _Criterion(), _loader(25), opt, torch.device("cpu"), 0, amp="fp16",
                            scaler=scaler)
    assert 1 <= stats["amp_skipped_steps"] < 25
    assert scaler.get_scale() < 2.0**30
    assert torch.isfinite(torch.tensor(stats["grad_norm"])) and stats["grad_norm"] > 0
    json.dumps(stats, allow_nan=False)
    assert not torch.equal(before, _flat(model)) and torch.isfinite(_flat(model)).all()


def test_fp16_stops_when_skipping_persists_across_epochs_and_names_the_terms():
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    crit = _BadCriterion(range(1, 100))
    before = _flat(model)
    stats = train_one_epoch(model, crit, _loader(2), opt, torch.device("cpu"), 0, amp="fp16", scaler=scaler,
                            max_consecutive_skips=3)
    assert stats["amp_skipped_steps"] == 2 and "grad_norm" not in stats and "loss" not in stats
    json.dumps(stats, allow_nan=False)
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps.*loss_b=inf"):
        train_one_epoch(model, crit, _loader(2), opt, torch.device("cpu"), 1, amp="fp16", scaler=scaler,
                        max_consecutive_skips=3)
    assert crit.calls == 3
    assert torch.equal(before, _flat(model))


def test_a_good_step_resets_the_count_of_consecutive_skips():
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    stats = train_one_epoch(model, _BadCriterion({1, 2, 4, 5, 7, 8}), _loader(9), opt, torch.device("cpu"), 0,
                            amp="fp16", scaler=scaler, max_consecutive_skips=3)
    assert stats["amp_skipped_steps"] == 6


def test_without_fp16_non_finite_gradients_stop_before_the_update():
    class _HugeGrad(_Criterion):
        def forward(self, outputs, targets):
            out = super().forward(outputs, targets)
            # Finite loss, infinite gradient: d/dx sqrt(x) at x = 0.
            out["loss_a"] = out["loss_a"] + (outputs["pred"] * 0).sum().sqrt()
            return out

    model = _Model()
    before = _flat(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="gradient"):
        train_one_epoch(model, _HugeGrad(), _loader(1), opt, torch.device("cpu"), 0)
    assert torch.equal(before, _flat(model))


# ---- parameters without a gradient --------------------------------------------------------------------

class _WithUnused(_Model):
    """The stand-in model plus a layer that is used only on the calls listed (1-based; never if empty)."""

    def __init__(self, used_on=()):
        super().__init__()
        self.extra = nn.Linear(2, 2)
        self.used_on = set(used_on)

    def forward(self, samples):
        out = super().forward(samples)
        if self.calls in self.used_on:
            out["pred"] = self.extra(out["pred"])
        return out


def test_unused_parameter_fails_naming_it_and_the_flag():
    model = _WithUnused()
    before = _flat(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UnusedParametersError, match=r"extra\.weight, extra\.bias.*--find_unused_parameters"):
        train_one_epoch(model, _Criterion(), _loader(2), opt, torch.device("cpu"), 0)
    assert torch.equal(before, _flat(model))
    train_one_epoch(model, _Criterion(), _loader(2), opt, torch.device("cpu"), 0, find_unused_parameters=True)
    assert not torch.equal(before, _flat(model))


@pytest.fixture
def gloo_group():
    """A one-process gloo group, so that a real DistributedDataParallel runs in this process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_unused_parameter_fails_at_the_first_step(gloo_group):
    model = nn.parallel.DistributedDataParallel(_WithUnused())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UnusedParametersError, match=r"extra\.weight.*--find_unused_parameters"):
        train_one_epoch(model, _Criterion(), _loader(2), opt, torch.device("cpu"), 0)


def test_ddp_parameter_unused_in_a_later_step_fails_naming_the_flag(gloo_group):
    """Used in the first step only: DDP's own error at the third forward (before the module runs) is
    re-raised naming the parameters and the flag."""
    model = nn.parallel.DistributedDataParallel(_WithUnused(used_on={1}))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UnusedParametersError, match=r"extra\.weight.*--find_unused_parameters"):
        train_one_epoch(model, _Criterion(), _loader(4), opt, torch.device("cpu"), 0)
    assert model.module.calls == 2


def test_ddp_with_find_unused_parameters_trains(gloo_group):
    model = nn.parallel.DistributedDataParallel(_WithUnused(used_on={1}), find_unused_parameters=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, _Criterion(), _loader(3), opt, torch.device("cpu"), 0)
    assert model.module.calls == 3 and torch.isfinite(torch.tensor(stats["loss"]))


# ---- host synchronisation -----------------------------------------------------------------------------

_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def test_a_training_step_reads_the_device_once(monkeypatch):
    """Every logged number of a step comes back in one copy: reads of tensor data made by the training
    loop itself or by MetricLogger.update are counted (a GPU waits for each of them)."""
    import os
    import sys

    reads = []
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1)
            where = os.path.basename(caller.f_code.co_filename), caller.f_code.co_name
            if where[0] == "engine.py" or where == ("logger.py", "update"):
                reads.append((_name, *where))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, _ManyTerms(), _loader(3), opt, torch.device("cpu"), 0, max_norm=0.1)
    assert len(reads) == 3, reads


def test_a_stop_names_the_iteration_counting_those_before_a_mid_epoch_resume():
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = r"^iteration 6 of 8: loss is inf; non-finite terms: loss_b=inf"
    with pytest.raises(NonFiniteLossError, match=expected):
        train_one_epoch(model, _Criterion(bad_call=2), _loader(3), opt, torch.device("cpu"), 0,
                        start_iteration=5)


class _Recorder:
    """Stands for the TensorBoard writer: records what train_one_epoch hands it."""

    def __init__(self):
        self.calls = []

    def iteration(self, epoch, iteration, scalars):
        self.calls.append((epoch, iteration, scalars))


def test_tensorboard_gets_each_printed_iteration_at_its_place_in_the_epoch():
    model, crit = _Model(), _Criterion()
    loader = _loader(3)
    first = _Criterion()(model(loader[0][0]), loader[0][1])  # the first step's terms, before any update
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = _Recorder()
    train_one_epoch(model, crit, loader, opt, torch.device("cpu"), 4, print_freq=2, start_iteration=5,
                    tensorboard=recorder)
    assert [(epoch, i) for epoch, i, _ in recorder.calls] == [(4, 5), (4, 7)]  # iterations 0 and 2 of 3
    scalars = recorder.calls[0][2]
    assert set(scalars) == {"loss", "loss_a", "loss_b", "lr", "grad_norm", "class_error", "iteration_time",
                            "data_time"}
    assert scalars["loss_a"] == pytest.approx(first["loss_a"].item(), rel=1e-6)
    assert scalars["loss_b"] == pytest.approx(2 * first["loss_b"].item(), rel=1e-6)  # weighted
    assert scalars["loss"] == pytest.approx(scalars["loss_a"] + scalars["loss_b"], rel=1e-6)
    assert scalars["lr"] == 0.1 and scalars["class_error"] == 12.5 and scalars["iteration_time"] > 0
