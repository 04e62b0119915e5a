"""Export a checkpoint to ONNX, the multi-scale deformable attention as standard operators (GridSample).

    python tools/export_onnx.py --resume exps/r50/checkpoint.pth --output model.onnx
    python tools/export_onnx.py --resume ckpt.pth --output model.onnx --padding_mask --postprocess

The architecture comes from the checkpoint's args, as in test.py; a model flag given here wins
(``--eval_bf`` applies the BatchFormer at inference, on the single stream). The graph (docs/export.md):

    inputs   images       (B, 3, H, W) float32, normalised with the ImageNet mean and std
             mask         (B, H, W) bool, True on padding                 (--padding_mask)
             orig_sizes   (B, 2) int64, (h, w) of each original image      (--postprocess)
    outputs  pred_logits  (B, Q, num_classes), pred_boxes (B, Q, 4) normalised (cx, cy, w, h); or,
             with --postprocess, the top --num_select detections of each image: scores (B, K),
             labels (B, K) int64, boxes (B, K, 4) (x0, y0, x1, y1) in pixels of orig_sizes

B, H and W are dynamic. The exported file is then run by onnxruntime against the PyTorch model on
an input of another size than the traced one (``--skip_check`` to leave that out).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.ops.functions.export_mode import export_mode  # noqa: E402
from util.args import get_args_parser  # noqa: E402
from util.atomic import write_atomically  # noqa: E402
from util.from_checkpoint import detector_from_checkpoint, typed_flags  # noqa: E402
from util.misc import NestedTensor  # noqa: E402

PROG = "export_onnx.py"
# GridSample is standard since opset 16; torch's exporter (torch.export-based) writes opset 18 or later.
MIN_OPSET = 18
RAW_OUTPUTS = ("pred_logits", "pred_boxes")
DETECTIONS = ("scores", "labels", "boxes")


class ExportedDetector(nn.Module):
    """The graph that is exported: any detector ``model(samples) -> {pred_logits, pred_boxes, ...}``.

    ``postprocess`` (optional) turns them into each image's top detections in pixels; it must offer
    ``batched(outputs, target_sizes) -> {scores, labels, boxes}`` (``models.postprocess.PostProcess``).
    """

    def __init__(self, detector: nn.Module, postprocess: nn.Module | None = None) -> None:
        super().__init__()
        self.detector = detector
        self.postprocess = postprocess

    def forward(self, images: Tensor, mask: Tensor | None = None,
                orig_sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        """images (B, 3, H, W); mask (B, H, W) True on padding, none for unpadded images; orig_sizes
        (B, 2) as (h, w), with ``postprocess`` only."""
        batch, _, height, width = images.shape
        if mask is None:
            mask = torch.zeros_like(images[:, 0], dtype=torch.bool)
        elif tuple(mask.shape) != (batch, height, width):
            raise ValueError(f"mask must be (B, H, W) = {(batch, height, width)} for images "
                             f"{tuple(images.shape)}, got {tuple(mask.shape)}")
        out = self.detector(NestedTensor(images, mask))
        if self.postprocess is None:
            return tuple(out[name] for name in RAW_OUTPUTS)
        if orig_sizes is None or tuple(orig_sizes.shape) != (batch, 2):
            shown = None if orig_sizes is None else tuple(orig_sizes.shape)
            raise ValueError(f"orig_sizes must be (B, 2) = {(batch, 2)} as (h, w), got {shown}")
        detections = self.postprocess.batched(out, orig_sizes)
        return tuple(detections[name] for name in DETECTIONS)


def example_inputs(exported: ExportedDetector, batch: int, size: tuple[int, int],
                   padding_mask: bool) -> dict[str, Tensor]:
    """Random inputs of ``batch`` images of ``size`` for ``exported``; with a mask, the last image is
    padded on the right and bottom. A trace takes 2 images: a batch of 1 would fix B to 1."""
    h, w = size
    inputs = {"images": torch.randn(batch, 3, h, w)}
    if padding_mask:
        mask = torch.zeros(batch, h, w, dtype=torch.bool)
        mask[-1, h - h // 4:], mask[-1, :, w - w // 4:] = True, True
        inputs["mask"] = mask
    if exported.postprocess is not None:
        inputs["orig_sizes"] = torch.randint(1, 2000, (batch, 2))
    return inputs


def dynamic_shapes(inputs: dict[str, Tensor]) -> dict[str, dict]:
    """The dynamic axes by name. Named axes are ``Dim.DYNAMIC`` to torch.export: a size the model
    needs (a level of at least 2 x 2, two-stage's --num_queries positions) narrows the range instead of
    failing the export. ``ExportedDetector`` checks that the inputs agree, which makes their axes one."""
    shapes = {"images": {0: "batch", 2: "height", 3: "width"}, "mask": {0: "batch", 1: "height", 2: "width"},
              "orig_sizes": {0: "batch"}}
    return {name: shapes[name] for name in inputs}


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silences what torch's exporter says that a user cannot act on: one warning per input sharing a
    dynamic axis with another (as asked), and onnxscript's constant-folding notes."""
    onnxscript_logger = logging.getLogger("onnxscript")
    level = onnxscript_logger.level
    onnxscript_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            yield
    finally:
        onnxscript_logger.setLevel(level)


def export(exported: ExportedDetector, output: str, inputs: dict[str, Tensor], opset: int) -> int:
    """Writes ``exported`` traced on ``inputs`` to ``output`` (replaced only once the new file is
    complete and valid); returns the file's opset."""
    import onnx

    output_names = list(RAW_OUTPUTS if exported.postprocess is None else DETECTIONS)
    exported.eval()
    with torch.no_grad(), export_mode(), _quiet_exporter():
        program = torch.onnx.export(
            exported, (), kwargs=inputs, dynamo=True, opset_version=opset, input_names=list(inputs),
            output_names=output_names, dynamic_shapes=dynamic_shapes(inputs), external_data=False,
            verbose=False,
        )
    def save_checked(tmp: str) -> None:
        program.save(tmp, external_data=False)
        onnx.checker.check_model(tmp)

    write_atomically(output, save_checked)
    return next(e.version for e in program.model_proto.opset_import if e.domain in ("", "ai.onnx"))


def max_differences(exported: ExportedDetector, path: str, inputs: dict[str, Tensor]) -> dict[str, float]:
    """Max |onnxruntime - PyTorch| of each output of ``path`` on ``inputs`` (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {name: t.numpy() for name, t in inputs.items()})
    with torch.no_grad():
        want = exported(**inputs)
    names = [o.name for o in session.get_outputs()]
    return {name: (torch.from_numpy(g).double() - w.double()).abs().max().item()
            for name, g, w in zip(names, got, want, strict=True)}


def export_flags() -> argparse.ArgumentParser:
    """The tool's own flags (main.py's are the model's)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("export")
    group.add_argument("--output", required=True, help="the .onnx file to write")
    group.add_argument("--opset", type=int, default=18, help=f"ONNX opset, at least {MIN_OPSET} (GridSample)")
    group.add_argument("--padding_mask", action="store_true",
                       help="a second input, the padding mask (B, H, W) bool, for batches of images of "
                            "different sizes padded to one; without it every pixel is image")
    group.add_argument("--postprocess", action="store_true",
                       help="end the graph with the top-k detections in pixels (an orig_sizes input)")
    group.add_argument("--num_select", type=int, default=100, help="detections per image with --postprocess")
    group.add_argument("--trace_size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"),
                       help="image size of the trace; the graph takes any size")
    group.add_argument("--skip_check", action="store_true",
                       help="do not compare onnxruntime with PyTorch after the export")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     parents=[get_args_parser(), export_flags()],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(device="cpu")
    return parser


def model_flags_typed(argv: list[str]) -> set[str]:
    """The main.py flags typed in ``argv``, which win over the checkpoint's (the tool's own set aside:
    ``--output`` would read as an abbreviation of main.py's ``--output_dir``)."""
    probe = export_flags()
    for action in probe._actions:
        action.required = False
    return typed_flags(probe.parse_known_args(argv)[1])


def _usage_problem(args: argparse.Namespace) -> str | None:
    if not args.resume:
        return "--resume is required: the checkpoint (path or URL) to export"
    if args.device != "cpu":
        return f"--device {args.device}: the export traces the model on the CPU; leave --device out"
    if args.opset < MIN_OPSET:
        return f"--opset {args.opset}: torch's ONNX exporter writes opset {MIN_OPSET} or later"
    if args.num_select < 1:
        return f"--num_select must be positive, got {args.num_select}"
    if min(args.trace_size) < 1:
        return f"--trace_size must be positive, got {args.trace_size}"
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        return f"--output {args.output}: its folder does not exist"
    return None


def _check_export_dependencies() -> None:
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 6):
        raise SystemExit(f"{PROG}: error: the export uses torch's torch.export-based ONNX exporter, "
                         f"torch 2.6 or later; this is torch {torch.__version__}")
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if not _importable(name)]
    if missing:
        raise SystemExit(f"{PROG}: error: the export needs {', '.join(missing)}: "
                         "pip install -r requirements.txt")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Exports, then returns the max |onnxruntime - PyTorch| of each output ({} with --skip_check)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    problem = _usage_problem(args)
    if problem:
        parser.error(problem)
    _check_export_dependencies()
    from main import user_errors  # the entry points' one way of ending a user error

    with user_errors(parser):
        loaded = detector_from_checkpoint(args.resume, "cpu", args, model_flags_typed(argv))
    detector, postprocessors = loaded.model, loaded.postprocessors
    if loaded.args.masks:
        print(f"{PROG}: the checkpoint has a mask head; the graph holds the detector's boxes only",
              flush=True)
        detector = detector.detr
    postprocess = None
    if args.postprocess:
        postprocess = postprocessors["bbox"]
        postprocess.num_select = args.num_select
    exported = ExportedDetector(detector, postprocess)
    inputs = example_inputs(exported, 2, tuple(args.trace_size), args.padding_mask)
    opset = export(exported, args.output, inputs, args.opset)
    print(f"{PROG}: wrote {args.output} (opset {opset}; inputs {', '.join(inputs)})", flush=True)
    if args.skip_check:
        return {}
    h, w = args.trace_size[0] + 64, args.trace_size[1] + 32  # neither the traced batch nor size
    check = example_inputs(exported, 3, (h, w), args.padding_mask)
    differences = max_differences(exported, args.output, check)
    shown = ", ".join(f"{name} {d:.2g}" for name, d in differences.items())
    print(f"{PROG}: onnxruntime against PyTorch on 3 images of {h}x{w}, max |difference|: {shown}",
          flush=True)
    return differences


if __name__ == "__main__":
    main()
