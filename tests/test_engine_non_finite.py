"""Non-finite outputs of a real (tiny, two-stage, box-refining) model, made so by a forward hook: no
matching cost is finite, and training stops naming the iteration and the outputs (or, under --amp
fp16, skips the step), evaluation goes on; never the matcher's or GIoU's bare error, on one process or
on two of which only one has the bad outputs."""
import argparse
import json
import math
import os
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from torch import nn

import main as main_module
from engine import NonFiniteLossError, evaluate, train_one_epoch
from models import build_model
from tests.tiny_model import tiny_flags
from util.misc import nested_tensor_from_tensor_list

# Two decoder layers: the first one's outputs are aux_outputs[0]; two-stage: enc_outputs too.
FLAGS = tiny_flags("--with_box_refine", "--dec_layers", "2", "--dropout", "0")
TWO_STAGE_SIZES = [(128, 160), (96, 128)]  # enough encoder positions for two-stage's 10 queries
# Without two-stage, smaller images: the fp16 (CPU autocast) and two-process runs are slow enough.
SMALL_SIZES = [(32, 48), (48, 32)]


def _build(two_stage: bool = True):
    torch.manual_seed(0)
    flags = [*FLAGS, "--two_stage"] if two_stage else FLAGS
    return build_model(argparse.ArgumentParser(parents=[main_module.get_args_parser()]).parse_args(flags))


def _batches(n: int, first_id: int = 1, sizes=TWO_STAGE_SIZES) -> list:
    """n batches of two images with two objects each; image ids first_id, first_id + 1, ..."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for b in range(n):
        images = nested_tensor_from_tensor_list([torch.randn(3, h, w, generator=g) for h, w in sizes])
        targets = tuple({"labels": torch.tensor([1, 5]), "image_id": torch.tensor([first_id + 2 * b + k]),
                         "boxes": torch.tensor([[0.3, 0.25, 0.4, 0.3], [0.55, 0.5, 0.4, 0.6]]),
                         "orig_size": torch.tensor([h, w]), "size": torch.tensor([h, w])}
                        for k, (h, w) in enumerate(sizes))
        batches.append((images, targets))
    return batches


def _coco(batches) -> COCO:
    images, anns = [], []
    for _, targets in batches:
        for t in targets:
            h, w = t["orig_size"].tolist()
            images.append({"id": int(t["image_id"]), "width": w, "height": h, "file_name": "x.jpg"})
            for label, (cx, cy, bw, bh) in zip(t["labels"].tolist(), t["boxes"].tolist()):
                box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
                anns.append({"id": len(anns) + 1, "image_id": images[-1]["id"], "category_id": label,
                             "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": i, "name": f"c{i}"} for i in range(1, 20)]}
    coco.createIndex()
    return coco


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


class _NaNOnCalls:
    """Forward hooks that turn ``module``'s output into NaN in the model's calls listed (1-based), and
    record the model's weights as each call starts (before that step's update)."""

    def __init__(self, model: nn.Module, module: nn.Module, calls):
        self.calls, self.count, self.weights_at = set(calls), 0, {}
        model.register_forward_pre_hook(self._count)
        module.register_forward_hook(self._nan)

    def _count(self, model, inputs):
        self.count += 1
        self.weights_at[self.count] = _weights(model)

    def _nan(self, module, inputs, output):
        return output * math.nan if self.count in self.calls else output


# Which head is hooked, and how the message names the output it makes non-finite.
HEADS = {
    "decoder_layer_0_logits": (lambda m: m.class_embed[0], "pred_logits of decoder layer 0 (aux_outputs[0])"),
    "last_layer_boxes": (lambda m: m.bbox_embed[1], "pred_boxes of the last decoder layer"),
    "encoder_logits": (lambda m: m.class_embed[2], "pred_logits of the encoder proposals (enc_outputs)"),
}


@pytest.mark.parametrize("head", HEADS.values(), ids=HEADS.keys())
def test_non_finite_outputs_stop_training_naming_the_iteration_and_the_outputs(head):
    module_of, name = head
    model, criterion, _ = _build()
    hook = _NaNOnCalls(model, module_of(model), calls={2})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteLossError) as raised:
        train_one_epoch(model, criterion, _batches(3), optimizer, torch.device("cpu"), 0, 0.1)
    message = str(raised.value)
    assert message.startswith(f"iteration 1 of 3: the model's outputs hold NaN/inf in {name}, so neither the "
                              "matching cost nor the loss is finite; stopping training.")
    assert "--lr" in message and "checkpoint" in message  # the advice
    assert "invalid numeric entries" not in message
    assert torch.equal(_weights(model), hook.weights_at[2])  # the bad step changed nothing
    assert not torch.equal(hook.weights_at[1], hook.weights_at[2])  # the good one did


def test_fp16_skips_the_step_whose_outputs_are_not_finite_and_counts_it(capsys):
    model, criterion, _ = _build(two_stage=False)
    hook = _NaNOnCalls(model, model.class_embed[0], calls={2})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    stats = train_one_epoch(model, criterion, _batches(2, sizes=SMALL_SIZES), optimizer, torch.device("cpu"),
                            0, 0.1, amp="fp16", scaler=scaler)
    assert stats["amp_skipped_steps"] == 1
    json.dumps(stats, allow_nan=False)
    out = capsys.readouterr().out
    assert ("Epoch: [0] iteration 1 of 2: --amp fp16 step skipped, the weights unchanged (the model's "
            "outputs hold NaN/inf in pred_logits of decoder layer 0 (aux_outputs[0]), so neither") in out
    assert torch.equal(_weights(model), hook.weights_at[2])  # skipped
    assert not torch.equal(hook.weights_at[1], hook.weights_at[2])


def test_evaluation_goes_on_drops_the_non_finite_detections_and_says_so(capsys):
    model, criterion, postprocessors = _build()
    _NaNOnCalls(model, model.bbox_embed[1], calls={1})  # the first batch's boxes: images 1 and 2
    batches = _batches(2)
    stats, evaluator = evaluate(model, criterion, postprocessors, batches, _coco(batches),
                                torch.device("cpu"))
    out = capsys.readouterr().out
    assert ("Test: the loss of 1 batch(es) was not finite (NaN/inf in pred_boxes of the last decoder layer): "
            "the loss averages leave them out; 200 detection(s) with a non-finite score or box were "
            "dropped") in out
    json.dumps(stats, allow_nan=False)
    results = evaluator.coco_results("bbox")
    json.dumps(results, allow_nan=False)
    assert {r["image_id"] for r in results} == {3, 4}
    assert len(stats["coco_eval_bbox"]) == 12 and "loss" in stats


def test_main_ends_in_one_line_naming_epoch_iteration_and_outputs(tmp_path, monkeypatch):
    import models

    real_build = models.build_model

    def build_with_nan(args):
        model, criterion, postprocessors = real_build(args)
        _NaNOnCalls(model, model.class_embed[0], calls={2})
        return model, criterion, postprocessors

    monkeypatch.setattr(models, "build_model", build_with_nan)
    parser = argparse.ArgumentParser(parents=[main_module.get_args_parser()])
    args = parser.parse_args(tiny_flags("--with_box_refine", "--dec_layers", "2", "--max_iters_per_epoch",
                                        "3", "--epochs", "1", "--num_workers", "0", "--output_dir",
                                        str(tmp_path)))
    with pytest.raises(SystemExit) as raised:
        main_module.main(args)
    assert str(raised.value).startswith(
        "Training stopped at epoch 0: iteration 1 of 3: the model's outputs hold NaN/inf in pred_logits of "
        "decoder layer 0 (aux_outputs[0]), so neither the matching cost nor the loss is finite; stopping "
        "training.")


# ---- two processes: only one of them has non-finite outputs -------------------------------------------

def _two_process_worker(rank: int, init_file: str, results: str) -> None:
    """Rank 1's outputs are not finite in calls 2 and 5: an epoch with the grad scaler (--amp fp16's
    path; the forward stays in float32, fp16 being slow on a CPU), then one without."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # a step out of lockstep fails instead of hanging
    try:
        torch.set_num_threads(1)
        model, criterion, _ = _build(two_stage=False)
        if rank == 1:
            _NaNOnCalls(model, model.class_embed[0], calls={2, 5})
        ddp = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        batches = _batches(3, first_id=1 + 10 * rank, sizes=SMALL_SIZES)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        stats = train_one_epoch(ddp, criterion, batches, optimizer, torch.device("cpu"), 0, 0.1,
                                scaler=scaler)
        outcome = {"skipped": stats["amp_skipped_steps"], "weights": _weights(model)}
        try:
            train_one_epoch(ddp, criterion, batches, optimizer, torch.device("cpu"), 1, 0.1)
        except NonFiniteLossError as e:
            outcome["stopped"] = str(e)
        torch.save(outcome, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_skip_or_stop_together_when_one_has_non_finite_outputs():
    with tempfile.TemporaryDirectory() as tmp:
        results = os.path.join(tmp, "outcome")
        mp.spawn(_two_process_worker, args=(os.path.join(tmp, "init"), results), nprocs=2)
        outcomes = [torch.load(f"{results}.{rank}") for rank in range(2)]
    assert [o["skipped"] for o in outcomes] == [1, 1]
    assert torch.equal(outcomes[0]["weights"], outcomes[1]["weights"])
    assert all(o["stopped"].startswith("iteration 1 of 3: ") for o in outcomes)
    assert "pred_logits of decoder layer 0" in outcomes[1]["stopped"]  # the process that saw them
