"""Joint image/target transforms for detection.

Every transform takes and returns ``(image, target)``. Until ``Normalize``, ``target['boxes']`` are
absolute xyxy pixels of the current image; ``Normalize`` turns them into cxcywh divided by the
image (w, h), the form the criterion and the matcher use. ``target['size']`` always follows the
image as (h, w). Randomness comes from Python's ``random`` module, which the DataLoader seeds per
worker.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import PIL.Image
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from util.box_ops import box_xyxy_to_cxcywh

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Per-instance fields that are filtered together with the boxes.
_INSTANCE_FIELDS = ("labels", "area", "iscrowd", "boxes", "masks")


def _image_wh(image) -> tuple[int, int]:
    if isinstance(image, PIL.Image.Image):
        return image.size
    return image.shape[-1], image.shape[-2]


def crop(image, target: dict, region: tuple[int, int, int, int]):
    """Crop to ``region`` = (top, left, height, width); instances left with no extent are dropped."""
    top, left, h, w = region
    image = TF.crop(image, top, left, h, w)
    target = target.copy()
    target["size"] = torch.tensor([h, w])
    keep = None
    if "boxes" in target:
        # (n, 4) xyxy -> (n, 2, 2) corners, shifted and clamped to the crop
        boxes = target["boxes"] - torch.as_tensor([left, top, left, top], dtype=target["boxes"].dtype)
        corners = torch.min(boxes.reshape(-1, 2, 2), torch.as_tensor([w, h], dtype=boxes.dtype)).clamp(min=0)
        extent = corners[:, 1, :] - corners[:, 0, :]
        target["boxes"] = corners.reshape(-1, 4)
        target["area"] = extent.prod(dim=1)
        keep = (extent > 0).all(dim=1)
    if "masks" in target:
        target["masks"] = target["masks"][:, top : top + h, left : left + w]
        # A non-convex segment can keep a box inside the crop while losing every pixel:
        # such an instance would train the mask loss on an empty target.
        has_pixels = target["masks"].flatten(1).any(1)
        keep = has_pixels if keep is None else keep & has_pixels
    if keep is not None:
        for field in _INSTANCE_FIELDS:
            if field in target:
                target[field] = target[field][keep]
    return image, target


def hflip(image, target: dict):
    image = TF.hflip(image)
    w, _ = _image_wh(image)
    target = target.copy()
    if "boxes" in target:
        x0, y0, x1, y1 = target["boxes"].unbind(-1)
        target["boxes"] = torch.stack((w - x1, y0, w - x0, y1), dim=-1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


def get_size_with_aspect_ratio(image_size: tuple[int, int], size: int, max_size: int | None = None):
    """Output (h, w) for an image of (w, h): shorter side ``size``, longer side at most ``max_size``.

    If the longer side would exceed max_size, size becomes round(max_size * shorter / longer);
    the shorter side is then ``size`` and the longer one int(size * longer / shorter).
    """
    w, h = image_size
    if max_size is not None:
        shorter, longer = float(min(w, h)), float(max(w, h))
        if longer / shorter * size > max_size:
            size = int(round(max_size * shorter / longer))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def get_size(image_size: tuple[int, int], size, max_size: int | None = None) -> tuple[int, int]:
    """(h, w) from an int (shorter side, see above) or an explicit (w, h) pair."""
    if isinstance(size, (list, tuple)):
        return size[1], size[0]
    return get_size_with_aspect_ratio(image_size, size, max_size)


def resize(image, target: dict | None, size, max_size: int | None = None):
    out_h, out_w = get_size(_image_wh(image), size, max_size)
    in_w, in_h = _image_wh(image)
    image = TF.resize(image, [out_h, out_w])
    if target is None:
        return image, None
    ratio_w, ratio_h = out_w / in_w, out_h / in_h
    target = target.copy()
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.as_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    if "area" in target:
        target["area"] = target["area"] * (ratio_w * ratio_h)
    target["size"] = torch.tensor([out_h, out_w])
    if "masks" in target:
        masks = target["masks"][:, None].float()
        if masks.shape[0] > 0:
            masks = torch.nn.functional.interpolate(masks, size=(out_h, out_w), mode="nearest")
        else:
            masks = masks.new_zeros((0, 1, out_h, out_w))
        target["masks"] = masks[:, 0] > 0.5
    return image, target


def pad(image, target: dict | None, padding: tuple[int, int]):
    """Pad the bottom-right corner by (pad_w, pad_h); boxes do not move."""
    pad_w, pad_h = padding
    image = TF.pad(image, [0, 0, pad_w, pad_h])
    if target is None:
        return image, None
    target = target.copy()
    h, w = _image_wh(image)[::-1]
    target["size"] = torch.tensor([h, w])
    if "masks" in target:
        target["masks"] = torch.nn.functional.pad(target["masks"], (0, pad_w, 0, pad_h))
    return image, target


class RandomCrop:
    def __init__(self, size: tuple[int, int]):
        self.size = size

    def __call__(self, img, target):
        return crop(img, target, T.RandomCrop.get_params(img, self.size))


class RandomSizeCrop:
    """Crop a random (h, w) with each side in [min_size, max_size], capped by the image's side."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size = min_size
        self.max_size = max_size

    def _side(self, image_side: int) -> int:
        hi = min(image_side, self.max_size)
        return random.randint(min(self.min_size, hi), hi)

    def __call__(self, img, target: dict):
        w_img, h_img = _image_wh(img)
        w = self._side(w_img)
        h = self._side(h_img)
        return crop(img, target, T.RandomCrop.get_params(img, [h, w]))


class CenterCrop:
    def __init__(self, size: tuple[int, int]):
        self.size = size

    def __call__(self, img, target):
        w_img, h_img = _image_wh(img)
        h, w = self.size
        top = int(round((h_img - h) / 2.0))
        left = int(round((w_img - w) / 2.0))
        return crop(img, target, (top, left, h, w))


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img, target):
        if random.random() < self.p:
            return hflip(img, target)
        return img, target


class RandomResize:
    """Resize the shorter side to one of ``sizes`` (chosen at random), the longer one capped at max_size."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None):
        if not isinstance(sizes, (list, tuple)) or len(sizes) == 0:
            raise ValueError(f"RandomResize expects a non-empty list of sizes, got {sizes!r}")
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, img, target=None):
        return resize(img, target, random.choice(self.sizes), self.max_size)


class RandomPad:
    def __init__(self, max_pad: int):
        self.max_pad = max_pad

    def __call__(self, img, target):
        return pad(img, target, (random.randint(0, self.max_pad), random.randint(0, self.max_pad)))


class RandomSelect:
    """Apply ``transforms1`` with probability p, else ``transforms2``."""

    def __init__(self, transforms1, transforms2, p: float = 0.5):
        self.transforms1 = transforms1
        self.transforms2 = transforms2
        self.p = p

    def __call__(self, img, target):
        if random.random() < self.p:
            return self.transforms1(img, target)
        return self.transforms2(img, target)


class ToTensor:
    """PIL image -> float (3, H, W) in [0, 1]."""

    def __call__(self, img, target):
        return TF.to_tensor(img), target


class Normalize:
    """Standardise the (3, H, W) image; boxes become cxcywh divided by the image's (w, h)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: torch.Tensor, target: dict | None = None):
        image = TF.normalize(image, mean=self.mean, std=self.std)
        if target is None:
            return image, None
        target = target.copy()
        if "boxes" in target:
            h, w = image.shape[-2:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            target["boxes"] = box_xyxy_to_cxcywh(target["boxes"]) / scale
        return image, target


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t}" for t in self.transforms)
        return f"{self.__class__.__name__}({inner}\n)"


# The published COCO recipe (docs/design/model.md, training recipe).
COCO_SCALES = tuple(range(480, 801, 32))
COCO_MAX_SIZE = 1333
COCO_CROP_RESIZE = (400, 500, 600)
COCO_CROP_RANGE = (384, 600)
COCO_VAL_SIZE = 800


def image_scale(args) -> float:
    """``--image_scale`` of ``args`` (1: the data set's own sizes, also for args that predate the flag)."""
    return getattr(args, "image_scale", 1.0)


def make_coco_transforms(
    image_set: str,
    scales: Sequence[int] = COCO_SCALES,
    max_size: int = COCO_MAX_SIZE,
    crop_resize: Sequence[int] = COCO_CROP_RESIZE,
    crop_range: tuple[int, int] = COCO_CROP_RANGE,
    val_size: int = COCO_VAL_SIZE,
    scale: float = 1.0,
) -> Compose:
    """Train: flip, then multi-scale resize or [resize, random crop, multi-scale resize]; val: one size.

    The defaults are the COCO recipe; smaller data sets (the toy set) pass their own scales. ``scale``
    multiplies every size of the recipe (``--image_scale``): 0.5 trains and evaluates at half of it.
    """
    def scaled(size: int) -> int:
        return max(1, round(size * scale))

    scales, crop_resize = [scaled(s) for s in scales], [scaled(s) for s in crop_resize]
    max_size, val_size, crop_range = scaled(max_size), scaled(val_size), tuple(scaled(s) for s in crop_range)
    normalize = Compose([ToTensor(), Normalize()])
    if image_set == "train":
        return Compose([
            RandomHorizontalFlip(),
            RandomSelect(
                RandomResize(list(scales), max_size=max_size),
                Compose([
                    RandomResize(list(crop_resize)),
                    RandomSizeCrop(*crop_range),
                    RandomResize(list(scales), max_size=max_size),
                ]),
            ),
            normalize,
        ])
    if image_set in ("val", "test"):
        return Compose([RandomResize([val_size], max_size=max_size), normalize])
    raise ValueError(f"unknown image_set {image_set!r}: expected 'train', 'val' or 'test'")
