"""Draw a checkpoint's detections (and, for a panoptic model, its segments) on images, as PNG.

    python tools/visualize.py exps/demo/checkpoint.pth --num_images 4 --output_dir exps/demo/detections
    python tools/visualize.py ckpt.pth --images a.jpg b.jpg --threshold 0.5 --device cpu

The model is rebuilt from the flags recorded in the checkpoint, as test.py does
(``util.from_checkpoint``; main.py flags after ``--`` override them, e.g. ``-- --eval_bf``). Without
``--images`` the first images of the validation split of the checkpoint's data set are drawn (found
where its run found them unless ``--coco_path`` etc. are given after ``--``), with the data set's
category names. A model trained
with ``--masks`` on a panoptic data set also gets ``<image>_panoptic.png``: every segment of its
panoptic prediction blended over the image in its own colour.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.panoptic_eval import rgb2id  # noqa: E402
from util.args import get_args_parser  # noqa: E402
from util.from_checkpoint import detector_from_checkpoint, typed_flags  # noqa: E402
from util.misc import nested_tensor_from_tensor_list  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint path or URL (a dict with 'model' and 'args')")
    p.add_argument("--images", nargs="+", default=None, help="image files; default: the validation set")
    p.add_argument("--num_images", type=int, default=4, help="validation images to draw without --images")
    p.add_argument("--image_size", type=int, default=800, help="shorter side for --images (as in eval)")
    p.add_argument("--threshold", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--output_dir", default="detections", help="where the PNG files go")
    p.add_argument("--device", default="cpu")
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        i = argv.index("--")
        return p.parse_args(argv[:i]), argv[i + 1:]
    return p.parse_args(argv), []


# Where the data sets are: unless given after --, where the checkpoint's run found them.
_DATA_LOCATIONS = ("coco_path", "coco_panoptic_path", "toy_root", "toy_panoptic_root")


def _with_recorded_data(args: argparse.Namespace, recorded, typed: set[str]) -> None:
    for flag in _DATA_LOCATIONS:
        value = recorded.get(flag) if isinstance(recorded, dict) else getattr(recorded, flag, None)
        if flag not in typed and value is not None:
            setattr(args, flag, value)


def denormalize(image: torch.Tensor) -> Image.Image:
    """(3, H, W) ImageNet-normalised tensor -> PIL image."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return TF.to_pil_image((image.cpu() * std + mean).clamp(0, 1))


def draw(image: Image.Image, result: dict, threshold: float,
         names: dict[int, str]) -> tuple[Image.Image, int]:
    """Boxes (xyxy pixels of ``image``), labels and scores of the detections above ``threshold``."""
    image = image.convert("RGB")
    canvas = ImageDraw.Draw(image)
    keep = result["scores"] >= threshold
    for box, label, score in zip(result["boxes"][keep].tolist(), result["labels"][keep].tolist(),
                                 result["scores"][keep].tolist()):
        colour = PALETTE[label % len(PALETTE)]
        canvas.rectangle(box, outline=colour, width=2)
        text = f"{names.get(label, label)} {score:.2f}"
        x0, y0 = box[0], max(box[1] - 11, 0)
        left, top, right, bottom = canvas.textbbox((x0, y0), text)
        canvas.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        canvas.text((x0, y0), text, fill=(255, 255, 255))
    return image, int(keep.sum())


def draw_panoptic(image: Image.Image, result: dict, alpha: float = 0.55) -> Image.Image:
    """The segments of a ``PostProcessPanoptic`` result (PNG of ids at the image's size) blended
    over ``image``, one palette colour per segment; VOID pixels are left as they are."""
    with Image.open(io.BytesIO(result["png_string"])) as png:
        ids = rgb2id(np.asarray(png.convert("RGB")))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    if ids.shape != pixels.shape[:2]:
        raise ValueError(f"draw_panoptic: segment ids of size {ids.shape} for an image of size "
                         f"{pixels.shape[:2]}")
    for seg in result["segments_info"]:
        where = ids == seg["id"]
        colour = np.asarray(PALETTE[(seg["id"] - 1) % len(PALETTE)], dtype=np.float32)
        pixels[where] = (1 - alpha) * pixels[where] + alpha * colour
    return Image.fromarray(pixels.round().astype(np.uint8))


def _load_image(path: str, size: int) -> tuple[torch.Tensor, Image.Image]:
    try:
        pil = Image.open(path).convert("RGB")
    except OSError as e:
        raise SystemExit(f"cannot read image {path}: {e}") from e
    w, h = pil.size
    scale = size / min(w, h)
    resized = pil.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    return TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD), resized


def main(argv: list[str] | None = None) -> list[str]:
    from main import user_errors  # the entry points' one way of ending a user error

    opts, overrides = parse_args(argv)
    parser = argparse.ArgumentParser(prog="visualize.py", parents=[get_args_parser()])
    typed = typed_flags(overrides)
    with user_errors(parser):
        detector = detector_from_checkpoint(opts.checkpoint, opts.device, parser.parse_args(overrides), typed)
    model, postprocessors, args = detector.model, detector.postprocessors, detector.args
    _with_recorded_data(args, detector.recorded, typed)

    names: dict[int, str] = {}
    if opts.images:
        items = [(os.path.splitext(os.path.basename(p))[0], *_load_image(p, opts.image_size))
                 for p in opts.images]
    else:
        from datasets import build_dataset, get_coco_api_from_dataset

        dataset = build_dataset("val", args)
        coco = get_coco_api_from_dataset(dataset)
        names = {c["id"]: c["name"] for c in coco.dataset.get("categories", [])}
        # a panoptic data set also names its stuff classes, which instance annotations leave out
        names.update({i: c["name"] for i, c in getattr(dataset, "categories", {}).items()})
        items = []
        for i in range(min(opts.num_images, len(dataset))):
            image, target = dataset[i]
            items.append((f"image{int(target['image_id']):06d}", image, denormalize(image)))

    os.makedirs(opts.output_dir, exist_ok=True)
    written = []
    with torch.no_grad():
        for stem, tensor, pil in items:
            outputs = model(nested_tensor_from_tensor_list([tensor.to(opts.device)]))
            size = torch.tensor([[pil.size[1], pil.size[0]]], device=opts.device)  # (h, w)
            result = {k: v.cpu() for k, v in postprocessors["bbox"](outputs, size)[0].items()}
            drawn, n = draw(pil, result, opts.threshold, names)
            path = os.path.join(opts.output_dir, f"{stem}.png")
            drawn.save(path)
            written.append(path)
            print(f"{path}: {n} detections >= {opts.threshold}", flush=True)
            if "panoptic" in postprocessors:
                panoptic = postprocessors["panoptic"](outputs, size, size)[0]
                path = os.path.join(opts.output_dir, f"{stem}_panoptic.png")
                draw_panoptic(pil, panoptic).save(path)
                written.append(path)
                print(f"{path}: {len(panoptic['segments_info'])} segments", flush=True)
    return written


if __name__ == "__main__":
    main()
