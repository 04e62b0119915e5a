"""Run a trained detector on image files, folders and videos: drawn images and a COCO results JSON.

    python tools/predict.py --resume exps/r50/checkpoint.pth photos/ clip.mp4 --output_dir exps/pred
    python tools/predict.py --resume r50_deformable_detr.pth a.jpg b.png --output_dir out --threshold 0.3

INPUT is an image file, a video file or a folder; a folder is searched recursively (hidden entries and
--output_dir left out) for images and videos, in sorted order, and its files of other types are
skipped with one counted warning. Written to --output_dir:

- for each image, the image at its own size with the detections scoring at least --threshold drawn
  (class name and score), named as the input (for a folder's images, the path below the folder), as
  .jpg for a JPEG input and .png otherwise; a panoptic model (--masks on a panoptic set) also writes
  <name>_panoptic.png with its segments;
- for each video, <name>.mp4: every frame drawn, at the video's frame rate (OpenCV, see requirements.txt);
- detections.json: the same detections in the COCO results format, one entry per detection:
  image_id (the images numbered from 1 in input order, then the video frames), file_name (the input
  file), frame (videos only, from 0), category_id (the data set's id, as in its annotation file),
  category_name, bbox [x, y, w, h] in pixels of the image as read (EXIF orientation applied), score.

The checkpoint decides the model (``util.from_checkpoint``, as test.py: its architecture, classes and
evaluation flags; main.py flags given here override them, with a notice), the class names (recorded in
the checkpoint, else the data set's) and the image size: an image is resized as the evaluation of the
checkpoint's data set resizes it (COCO: shorter side 800, longer at most 1333; times the checkpoint's
--image_scale), and decoded as training
decodes it (``datasets/images.py``: EXIF orientation, 16-bit PNGs, --max_image_pixels). The other
main.py flags mean what they mean there: --device (default: cuda where there is one), --batch_size,
--num_workers (image decoding), --amp.

Batches hold only images of one size after the resize, so that no image is padded: a padded image's
detections would depend on the others of its batch (the backbone sees the padding), and any
--batch_size gives the detections of --batch_size 1 (except with --eval_bf, whose BatchFormer mixes the
batch). An image or video that cannot be read is skipped with a warning; the summary counts them.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.errors import DatasetError, data_error_message, listing  # noqa: E402
from datasets.images import pixel_limit, read_rgb  # noqa: E402
from datasets.video import VideoReader, VideoWriter, is_video_file  # noqa: E402
from util.args import FlagError, get_args_parser  # noqa: E402
from util.drawing import draw, draw_panoptic  # noqa: E402
from util.from_checkpoint import LoadedDetector, detector_from_checkpoint, typed_flags  # noqa: E402
from util.misc import nested_tensor_from_tensor_list  # noqa: E402

DETECTIONS_FILE = "detections.json"
# Decoded images waiting for others of their size, per image of --batch_size: beyond it the oldest
# partial batch runs as it is (a folder of all-different sizes must not be held in memory).
_PENDING_PER_BATCH = 4


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predict.py", parents=[get_args_parser()], description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, video files, folders")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="draw and list the detections scoring at least this (0 keeps all: the best 100 "
                             "per image)")
    parser.set_defaults(device="cuda" if torch.cuda.is_available() else "cpu")
    return parser


@dataclass(frozen=True)
class Input:
    """path: the file as found (an argument, or a folder argument joined with the path below it);
    name: its outputs' path in --output_dir without extension, unique among the inputs."""

    path: str
    name: str


def _image_extensions() -> frozenset[str]:
    PIL.Image.init()
    return frozenset(ext for ext, fmt in PIL.Image.registered_extensions().items() if fmt in PIL.Image.OPEN)


def _folder_files(folder: str, output_dir: str) -> Iterator[str]:
    """The files below ``folder``, sorted, without hidden entries and without ``output_dir``'s tree."""
    skip = os.path.realpath(output_dir)
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(root, d)) != skip)
        yield from (os.path.join(root, f) for f in sorted(files) if not f.startswith("."))


def collect_inputs(arguments: Sequence[str], output_dir: str) -> tuple[list[Input], list[str]]:
    """(the inputs, the files of other types found in folders). An argument that does not exist is a
    FlagError; a file given by name is tried whatever its type."""
    images = _image_extensions()
    found: list[tuple[str, str]] = []  # (path, name)
    other_types: list[str] = []
    for argument in arguments:
        if os.path.isdir(argument):
            for path in _folder_files(argument, output_dir):
                if is_video_file(path) or os.path.splitext(path)[1].lower() in images:
                    found.append((path, os.path.splitext(os.path.relpath(path, argument))[0]))
                else:
                    other_types.append(path)
        elif os.path.isfile(argument):
            found.append((argument, os.path.splitext(os.path.basename(argument))[0]))
        else:
            raise FlagError(f"INPUT {argument}: no such file or folder")
    taken: set[str] = set()
    inputs = []
    for path, name in found:
        unique, n = name, 1
        while unique in taken:  # a.jpg and a.png, or two folders' a.jpg
            n += 1
            unique = f"{name}_{n}"
        taken.add(unique)
        inputs.append(Input(path, unique))
    return inputs, other_types


@dataclass
class Picture:
    """One image or video frame to detect on: ``image`` the pixels as read (what is drawn on and what the
    boxes are in), ``tensor`` (3, h, w) the model's input."""

    input: Input
    image_id: int
    image: PIL.Image.Image
    tensor: torch.Tensor
    frame: int | None = None


class _ImageFiles(Dataset):
    """Decodes and transforms the image inputs (in DataLoader workers): a Picture, or the reason a file
    cannot be read."""

    def __init__(self, inputs: Sequence[Input], first_id: int, transforms: Callable,
                 max_pixels: int | None):
        self.inputs, self.first_id = inputs, first_id
        self.transforms, self.max_pixels = transforms, max_pixels

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> Picture | tuple[Input, str]:
        item = self.inputs[index]
        try:
            with pixel_limit(self.max_pixels):
                image = read_rgb(item.path)
        except DatasetError as e:
            return item, data_error_message(e)
        except Exception as e:  # noqa: BLE001 (any decoder failure on one file must not stop the others)
            return item, f"cannot read image {item.path}: {type(e).__name__}: {e}"
        tensor, _ = self.transforms(image, None)
        return Picture(item, self.first_id + index, image, tensor)


def _unbatched(item):
    return item


def batches_by_size(pictures: Iterable[Picture], batch_size: int) -> Iterator[list[Picture]]:
    """Batches of at most ``batch_size`` pictures of one tensor size, each size's in arrival order; at
    most ``_PENDING_PER_BATCH * batch_size`` pictures wait (then the oldest partial batch goes)."""
    pending: dict[tuple[int, ...], list[Picture]] = {}
    waiting = 0
    for picture in pictures:
        size = tuple(picture.tensor.shape)
        pending.setdefault(size, []).append(picture)
        waiting += 1
        if len(pending[size]) == batch_size:
            full = pending.pop(size)
        elif waiting > _PENDING_PER_BATCH * batch_size:
            full = pending.pop(next(iter(pending)))
        else:
            continue
        waiting -= len(full)
        yield full
    yield from pending.values()


def batches_in_order(pictures: Iterable[Picture], batch_size: int) -> Iterator[list[Picture]]:
    """Consecutive pictures of one tensor size, at most ``batch_size``: a video's frames keep their order."""
    batch: list[Picture] = []
    for picture in pictures:
        if batch and (len(batch) == batch_size or picture.tensor.shape != batch[0].tensor.shape):
            yield batch
            batch = []
        batch.append(picture)
    if batch:
        yield batch


class Detector:
    """The checkpoint's model and post-processing on a batch of pictures of one size."""

    def __init__(self, loaded: LoadedDetector, device: torch.device, amp: str | None):
        self.model, self.postprocessors, self.device, self.amp = (
            loaded.model, loaded.postprocessors, device, amp)

    @torch.no_grad()
    def __call__(self, pictures: Sequence[Picture]) -> list[tuple[dict, dict | None]]:
        """(detections: ``PostProcess``'s scores, labels, xyxy boxes in pixels of the picture's image,
        panoptic result or None) per picture."""
        from engine import autocast

        samples = nested_tensor_from_tensor_list([p.tensor for p in pictures]).to(self.device)
        with autocast(self.device, self.amp):
            outputs = self.model(samples)
        original = torch.tensor([[p.image.height, p.image.width] for p in pictures], device=self.device)
        detections = [{k: v.cpu() for k, v in result.items()}
                      for result in self.postprocessors["bbox"](outputs, original)]
        if "panoptic" not in self.postprocessors:
            return [(d, None) for d in detections]
        processed = torch.tensor([list(p.tensor.shape[-2:]) for p in pictures], device=self.device)
        return list(zip(detections, self.postprocessors["panoptic"](outputs, processed, original)))


def above(detections: Mapping[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    keep = detections["scores"] >= threshold
    return {k: v[keep] for k, v in detections.items()}


def coco_results(picture: Picture, detections: Mapping[str, torch.Tensor],
                 names: Mapping[int, str] | None) -> list[dict]:
    """The COCO results entries of one picture's detections (bbox xywh in pixels)."""
    entries = []
    for (x0, y0, x1, y1), label, score in zip(detections["boxes"].tolist(), detections["labels"].tolist(),
                                              detections["scores"].tolist()):
        entry = {"image_id": picture.image_id, "file_name": picture.input.path}
        if picture.frame is not None:
            entry["frame"] = picture.frame
        entry.update(category_id=label, category_name=(names or {}).get(label),
                     bbox=[round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)], score=score)
        entries.append(entry)
    return entries


def _save_image(image: PIL.Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".jpg"):
        image.save(path, quality=95)
    else:
        image.save(path)


class Run:
    """Detects on the inputs and writes the outputs; counts what it did and skipped."""

    def __init__(self, detector: Detector, args: argparse.Namespace, names: Mapping[int, str] | None,
                 transforms: Callable):
        self.detector, self.args, self.names, self.transforms = detector, args, names, transforms
        self.results: list[dict] = []
        self.written: list[str] = []
        self.unreadable: list[str] = []
        self.images = self.frames = 0

    def _skip(self, reason: str) -> None:
        print(f"warning: skipping: {reason}", flush=True)
        self.unreadable.append(reason)

    def _drawn(self, picture: Picture, detections: dict, panoptic: dict | None
               ) -> tuple[dict, list[tuple[str, PIL.Image.Image]]]:
        kept = above(detections, self.args.threshold)
        self.results += coco_results(picture, kept, self.names)
        drawn = [("", draw(picture.image, kept, self.names))]
        if panoptic is not None:
            drawn.append(("_panoptic", draw_panoptic(picture.image, panoptic)))
        return kept, drawn

    def images_of(self, inputs: Sequence[Input], first_id: int) -> None:
        files = _ImageFiles(inputs, first_id, self.transforms, self.args.max_image_pixels)
        loader = DataLoader(files, batch_size=None, num_workers=self.args.num_workers, collate_fn=_unbatched)

        def readable() -> Iterator[Picture]:
            for item in loader:
                if isinstance(item, Picture):
                    yield item
                else:
                    self._skip(item[1])

        for batch in batches_by_size(readable(), self.args.batch_size):
            for picture, (detections, panoptic) in zip(batch, self.detector(batch)):
                kept, drawn = self._drawn(picture, detections, panoptic)
                jpeg = picture.input.path.lower().endswith((".jpg", ".jpeg"))
                for suffix, image in drawn:  # the drawing as the input's type; the segments as PNG
                    ending = f"{suffix}.png" if suffix else (".jpg" if jpeg else ".png")
                    path = os.path.join(self.args.output_dir, picture.input.name + ending)
                    _save_image(image, path)
                    self.written.append(path)
                self.images += 1
                print(f"{picture.input.path}: {len(kept['scores'])} detections >= {self.args.threshold} "
                      f"-> {self.written[-len(drawn)]}", flush=True)

    def video(self, item: Input, first_id: int) -> int:
        """Detects on every frame of ``item`` and writes the drawn video; returns the frames read."""
        try:
            reader = VideoReader(item.path)
        except DatasetError as e:
            self._skip(data_error_message(e))
            return 0
        writers: dict[str, VideoWriter] = {}
        frames = detected = 0

        def pictures() -> Iterator[Picture]:
            for index, image in enumerate(reader):
                tensor, _ = self.transforms(image, None)
                yield Picture(item, first_id + index, image, tensor, frame=index)

        try:
            for batch in batches_in_order(pictures(), self.args.batch_size):
                for picture, (detections, panoptic) in zip(batch, self.detector(batch)):
                    kept, drawn = self._drawn(picture, detections, panoptic)
                    detected += len(kept["scores"])
                    for suffix, image in drawn:
                        if suffix not in writers:
                            path = os.path.join(self.args.output_dir, f"{item.name}{suffix}.mp4")
                            os.makedirs(os.path.dirname(path), exist_ok=True)
                            writers[suffix] = VideoWriter(path, reader.fps)
                        writers[suffix].write(image)
                    frames += 1
        except OSError as e:
            self._skip(f"{item.path}: {e}")
        finally:
            for writer in writers.values():
                writer.close()
                self.written.append(writer.path)
        if frames == 0 and not writers:
            self._skip(f"cannot read video {item.path}: no frame could be decoded")
        elif writers:
            print(f"{item.path}: {frames} frames, {detected} detections >= {self.args.threshold} -> "
                  f"{writers[''].path}", flush=True)
        self.frames += frames
        return frames


def _class_names(args: argparse.Namespace) -> dict[int, str] | None:
    """The names the checkpoint recorded, else the data set's (None: labels show category ids)."""
    from datasets import dataset_metadata

    try:
        names = dataset_metadata(args).class_names
    except DatasetError as e:
        print(f"note: no class names ({data_error_message(e)}): the labels show category ids", flush=True)
        return None
    if names is None:
        print("note: neither the checkpoint nor its data set names the classes: the labels show category ids",
              flush=True)
    return dict(names) if names is not None else None


def predict(args: argparse.Namespace, detector: LoadedDetector) -> Run:
    """Runs ``detector`` (on ``args.device``) on ``args.inputs`` with the flags ``args`` (the detector's
    resolved ones); writes the drawn images, videos and detections.json to ``args.output_dir``."""
    from datasets import make_transforms
    from main import _write_json

    inputs, other_types = collect_inputs(args.inputs, args.output_dir)
    os.makedirs(args.output_dir, exist_ok=True)
    run = Run(Detector(detector, torch.device(args.device), args.amp), args, _class_names(args),
              make_transforms("val", args))
    images = [item for item in inputs if not is_video_file(item.path)]
    run.images_of(images, first_id=1)
    next_id = len(images) + 1
    for item in inputs:
        if is_video_file(item.path):
            next_id += run.video(item, next_id)
    run.results.sort(key=lambda r: (r["image_id"], -r["score"]))
    path = os.path.join(args.output_dir, DETECTIONS_FILE)
    _write_json(path, run.results)
    run.written.append(path)
    if other_types:
        kinds = Counter(os.path.splitext(p)[1].lower() or "(no extension)" for p in other_types)
        counted = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
        print(f"warning: skipped {len(other_types)} files of types neither image nor video in the input "
              f"folders ({counted}): {listing(other_types, 5)}", flush=True)
    if run.unreadable:
        print(f"warning: skipped {len(run.unreadable)} unreadable inputs (listed above)", flush=True)
    print(f"{run.images} images and {run.frames} video frames: {len(run.results)} detections >= "
          f"{args.threshold} in {path}", flush=True)
    if run.images + run.frames == 0:
        raise DatasetError(f"none of the {len(inputs)} inputs could be read")
    return run


def main(argv: list[str] | None = None) -> list[str]:
    """The command line; returns the files written."""
    from main import _check_device, user_errors  # the entry points' one way of ending a user error

    parser = get_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_intermixed_args(argv)
    if not args.resume:
        parser.error("--resume is required: the checkpoint (path, URL or Hugging Face folder) to run")
    if not args.output_dir:
        parser.error("--output_dir is required: where the drawn images and detections.json go")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    with user_errors(parser):
        collect_inputs(args.inputs, args.output_dir)  # a mistyped INPUT stops before the model loads
        device = _check_device(args)
        detector = detector_from_checkpoint(args.resume, device, args, typed_flags(argv))
        return predict(detector.args, detector).written


if __name__ == "__main__":
    main()
