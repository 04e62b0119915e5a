"""tools/export_onnx.py: the exported graph, run by onnxruntime on the CPU, computes what PyTorch does,
at other batch sizes and image sizes than the traced ones, with and without padding.

Each case is a flag set of the tiny model; a detector added to the registry is one more case.
"""
import argparse

import pytest
import torch

from models.ops.modules import MSDeformAttn
from tests.tiny_model import tiny_flags
from tools import export_onnx
from util.args import get_args_parser, parse_args
from util.from_checkpoint import detector_from_checkpoint, typed_flags
from util.misc import NestedTensor, nested_tensor_from_tensor_list

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TRACE_SIZE = ("96", "128")
TOLERANCE = 1e-4
CASES = {
    "single_scale": (),
    "multi_scale": ("--num_feature_levels", "4"),
    "multi_scale_refine_two_stage": ("--num_feature_levels", "4", "--with_box_refine", "--two_stage"),
    "batchformer": ("--bf", "1", "--insert_idx", "0"),  # skipped at inference
    "detr_batchformer": ("--meta_arch", "detr", "--bf", "3"),  # a sequence-first encoder, no deformable op
}


def _checkpoint(tmp_path, flags: tuple[str, ...]) -> str:
    """A checkpoint of the tiny model with ``flags``, its weights moved off their initial values (a zero
    box head, for one, would hide a wrong reference point)."""
    from models import build_model

    # parse_args: the detector's own defaults (--meta_arch) under the flags, as main.py parses them
    args = parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), tiny_flags(*flags))
    model, _, _ = build_model(args)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "args": args, "epoch": 0}, path)
    return str(path)


def _export(checkpoint: str, output, *flags: str) -> None:
    export_onnx.main(["--resume", checkpoint, "--output", str(output), "--trace_size", *TRACE_SIZE,
                      "--skip_check", *flags])


def _pytorch(checkpoint: str, *flags: str):
    """(model, postprocessors) of the checkpoint as the tool builds them, run the normal way (not in export
    mode)."""
    loaded = detector_from_checkpoint(checkpoint, "cpu", get_args_parser().parse_args(list(flags)),
                                      typed_flags(flags))
    return loaded.model, loaded.postprocessors


def _run(path, **inputs: torch.Tensor) -> list[torch.Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(a) for a in session.run(None, {k: v.numpy() for k, v in inputs.items()})]


def _images() -> list[torch.Tensor]:
    """Two images of different sizes, neither the traced one: their batch is padded (80x112 in 104x112)."""
    return [torch.randn(3, 80, 112), torch.randn(3, 104, 72)]


@pytest.mark.parametrize("flags", CASES.values(), ids=CASES.keys())
def test_onnxruntime_matches_pytorch_on_other_sizes_with_padding(tmp_path, flags):
    checkpoint = _checkpoint(tmp_path, flags)
    path = tmp_path / "model.onnx"
    _export(checkpoint, path, "--padding_mask")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images", "mask"]
    assert [o.name for o in graph.output] == ["pred_logits", "pred_boxes"]
    ops = {(n.domain, n.op_type) for n in graph.node}
    assert {domain for domain, _ in ops} <= {"", "ai.onnx"}, "custom operators in the graph"
    detector, _ = _pytorch(checkpoint)
    deformable = any(isinstance(m, MSDeformAttn) for m in detector.modules())
    assert (("", "GridSample") in ops) == deformable, "the deformable attention as standard GridSample"
    padded = nested_tensor_from_tensor_list(_images())
    assert padded.mask.any(), "the batch has padding"
    single = NestedTensor(torch.randn(1, 3, 120, 88), torch.zeros(1, 120, 88, dtype=torch.bool))
    for samples in (padded, single):
        with torch.no_grad():
            want = detector(samples)
        logits, boxes = _run(path, images=samples.tensors, mask=samples.mask)
        torch.testing.assert_close(logits, want["pred_logits"], rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(boxes, want["pred_boxes"], rtol=0, atol=TOLERANCE)
    # The mask is used: read as unpadded, the same batch gives other predictions.
    unmasked, _ = _run(path, images=padded.tensors, mask=torch.zeros_like(padded.mask))
    padded_logits = _run(path, images=padded.tensors, mask=padded.mask)[0]
    assert (unmasked - padded_logits).abs().max() > 100 * TOLERANCE


def test_eval_bf_exports_the_batchformer_across_the_batch(tmp_path):
    """With --eval_bf each image's predictions depend on the others of its batch, in the graph too. A
    checkpoint trained with --bf_scope global exports too: the graph is one process, its batch the scope."""
    checkpoint = _checkpoint(tmp_path, (*CASES["batchformer"], "--bf_scope", "global"))
    path = tmp_path / "model.onnx"
    _export(checkpoint, path, "--eval_bf", "--padding_mask")
    with_bf, _ = _pytorch(checkpoint, "--eval_bf")
    without_bf, _ = _pytorch(checkpoint)
    samples = nested_tensor_from_tensor_list(_images())
    with torch.no_grad():
        want = with_bf(samples)
        skipped = without_bf(samples)
    logits, boxes = _run(path, images=samples.tensors, mask=samples.mask)
    torch.testing.assert_close(logits, want["pred_logits"], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(boxes, want["pred_boxes"], rtol=0, atol=TOLERANCE)
    assert (want["pred_logits"] - skipped["pred_logits"]).abs().max() > 100 * TOLERANCE


def test_postprocess_in_the_graph_gives_the_top_detections_in_pixels(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, ())
    path = tmp_path / "model.onnx"
    # Without --skip_check: the tool runs its own comparison too.
    differences = export_onnx.main(["--resume", checkpoint, "--output", str(path), "--trace_size",
                                    *TRACE_SIZE, "--postprocess", "--num_select", "7"])
    assert set(differences) == {"scores", "labels", "boxes"} and differences["scores"] < TOLERANCE
    assert "onnxruntime against PyTorch on 3 images of 160x160" in capsys.readouterr().out
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["images", "orig_sizes"]

    detector, postprocessors = _pytorch(checkpoint)
    postprocessors["bbox"].num_select = 7
    images = torch.randn(3, 3, 72, 136)
    orig_sizes = torch.tensor([[480, 640], [640, 480], [100, 1000]])
    with torch.no_grad():
        want = postprocessors["bbox"](detector(images), orig_sizes)  # B dicts
    scores, labels, boxes = _run(path, images=images, orig_sizes=orig_sizes)
    assert scores.shape == (3, 7) and labels.dtype == torch.int64 and boxes.shape == (3, 7, 4)
    for i, image in enumerate(want):
        torch.testing.assert_close(scores[i], image["scores"], rtol=0, atol=TOLERANCE)
        assert torch.equal(labels[i], image["labels"])
        # pixels of images up to 1000 wide: the same 1e-4 relative to the image
        torch.testing.assert_close(boxes[i], image["boxes"], rtol=0, atol=TOLERANCE * 1000)


@pytest.mark.parametrize("flags, message", [
    (("--opset", "17"), "--opset 17: torch's ONNX exporter writes opset 18 or later"),
    (("--device", "cuda"), "--device cuda: the export traces the model on the CPU"),
])
def test_flags_it_cannot_honour_end_in_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        export_onnx.main(["--resume", "missing.pth", "--output", str(tmp_path / "m.onnx"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_checkpoint_ends_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"export_onnx.py: error: .*missing\.pth"):
        export_onnx.main(["--resume", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()
