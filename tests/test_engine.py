"""engine.py with a stand-in model: clipping, iteration limit, non-finite losses, amp, COCO evaluation."""
import pytest
import torch
from pycocotools.coco import COCO
from torch import nn

from engine import NonFiniteLossError, evaluate, to_float32, train_one_epoch
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

    def postprocess(outputs, target_sizes):
        results = []
        for image_id in outputs["ids"].round().long().tolist():
            anns = coco.imgToAnns[image_id]
            boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                   a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32)
            results.append({"scores": torch.full((len(anns),), 0.9),
                            "labels": torch.tensor([a["category_id"] for a in anns]), "boxes": boxes})
        return results

    batches = []
    for ids in ([1, 2], [3]):
        images = torch.zeros(len(ids), 3, 8, 8)
        images[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.float32)
        targets = tuple({"goal": torch.zeros(2), "image_id": torch.tensor([i]),
                         "orig_size": torch.tensor([80, 100])} for i in ids)
        batches.append((NestedTensor(images, torch.zeros(len(ids), 8, 8, dtype=torch.bool)), targets))
    stats, evaluator = evaluate(_Model(), _Criterion(), {"bbox": postprocess}, batches, coco,
                                torch.device("cpu"))
    assert len(stats["coco_eval_bbox"]) == 12
    assert stats["coco_eval_bbox"][0] == pytest.approx(1.0)
    assert stats["coco_eval_bbox"][1] == pytest.approx(1.0)
    assert "loss" in stats and "loss_a_unscaled" in stats and "loss_b_scaled" in stats
    assert sorted({r["image_id"] for r in evaluator.coco_results("bbox")}) == [1, 2, 3]
