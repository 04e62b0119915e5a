"""Image files as annotation tools show them: 8-bit RGB from every mode, EXIF orientation, the size the
annotation gives, Pillow's pixel limit."""
import json

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest

from datasets import build_dataset
from datasets.coco import CocoDetection
from datasets.errors import DatasetError, DatasetFormatError, DatasetReadError
from datasets.torchvision_datasets import read_image
from tests.coco_files import boxes, categories
from util.args import get_args_parser

_ORIENTATION = 0x0112


def _gradient(w: int = 40, h: int = 20) -> np.ndarray:
    """(h, w, 3) uint8 with distinct rows and columns, so that any turn or mirror changes it."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 6, y * 12, (x + 3 * y) % 256], axis=-1).astype(np.uint8)


def _dataset(tmp_path, file_name: str, size, **kw) -> CocoDetection:
    """A one-image COCO-format split whose image is the file ``file_name`` already in tmp_path; its entry
    has (w, h) ``size`` (None: no size in the entry)."""
    entry = {"id": 1, "file_name": file_name}
    if size is not None:
        entry.update(width=size[0], height=size[1])
    data = {"images": [entry], "annotations": boxes([{**entry, "width": 8, "height": 8}], [1]),
            "categories": categories({1: "thing"})}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return CocoDetection(str(tmp_path), str(tmp_path / "ann.json"), transforms=None, **kw)


def test_16_bit_png_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    values = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    PIL.Image.fromarray(values).save(tmp_path / "deep.png")
    assert PIL.Image.open(tmp_path / "deep.png").mode == "I;16"
    image = np.asarray(read_image(str(tmp_path / "deep.png")))
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    expected = (values >> 8).astype(np.uint8)  # the top byte of each 16-bit value
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], expected)


def test_16_bit_png_reaches_the_training_image(tmp_path):
    values = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    PIL.Image.fromarray(values).save(tmp_path / "deep.png")
    image, _ = _dataset(tmp_path, "deep.png", (64, 48))[0]
    pixels = np.asarray(image)
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 50


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"])
def test_every_mode_pil_writes_decodes_to_8_bit_rgb(tmp_path, mode):
    base = PIL.Image.fromarray(_gradient())
    if mode == "I;16":
        image = PIL.Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
        expected = np.asarray(base.convert("L").convert("RGB"))
    else:
        image = base.convert(mode)
        expected = np.asarray(image.convert("RGB"))
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path)
    if mode == "CMYK":  # JPEG is lossy: the reference is PIL's own reading of the written file
        expected = np.asarray(PIL.Image.open(path).convert("RGB"))
    decoded = read_image(str(path))
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), expected)


def test_palette_with_transparency_decodes_without_a_warning(tmp_path, recwarn):
    image = PIL.Image.fromarray(_gradient()).convert("P")
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    assert read_image(str(tmp_path / "p.png")).mode == "RGB"
    assert not [w for w in recwarn if "Transparency" in str(w.message)]


@pytest.mark.parametrize("mode,values", [("I", [0, 70000]), ("F", [0.0, 0.5])])
def test_pixels_without_an_8_bit_reading_stop_naming_the_file(tmp_path, mode, values):
    pixels = np.array([values * 8] * 4, dtype=np.int32 if mode == "I" else np.float32)
    PIL.Image.fromarray(pixels, mode=mode).save(tmp_path / "odd.tif")
    with pytest.raises(DatasetReadError, match=r"odd\.tif.*no defined 8-bit reading"):
        read_image(str(tmp_path / "odd.tif"))


def _with_orientation(path, orientation: int, pixels: np.ndarray) -> None:
    exif = PIL.Image.Exif()
    exif[_ORIENTATION] = orientation
    PIL.Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_exif_transpose_shows_it(tmp_path, orientation):
    path = tmp_path / "phone.jpg"
    _with_orientation(path, orientation, _gradient(40, 20))
    with PIL.Image.open(path) as img:
        reference = PIL.ImageOps.exif_transpose(img).convert("RGB")  # what annotation tools display
    decoded = read_image(str(path), annotated_size=reference.size)
    assert decoded.size == reference.size == ((20, 40) if orientation >= 5 else (40, 20))
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(reference))


def test_a_turned_image_trains_upright_and_its_entry_size_is_checked(tmp_path):
    _with_orientation(tmp_path / "phone.jpg", 6, _gradient(40, 20))
    image, target = _dataset(tmp_path, "phone.jpg", (20, 40))[0]
    assert image.size == (20, 40) and target["orig_size"].tolist() == [40, 20]
    with pytest.raises(DatasetFormatError, match=r"phone\.jpg is 20 x 40 .*/ann\.json .* says 30 x 30"):
        _dataset(tmp_path, "phone.jpg", (30, 30))[0]


def test_an_entry_with_the_stored_size_keeps_the_stored_frame(tmp_path):
    """The annotation tool ignored the tag (its size is the stored one): the boxes are in that frame."""
    _with_orientation(tmp_path / "phone.jpg", 6, _gradient(40, 20))
    image, _ = _dataset(tmp_path, "phone.jpg", (40, 20))[0]
    assert image.size == (40, 20)


def test_an_entry_without_a_size_gets_the_upright_one(tmp_path):
    _with_orientation(tmp_path / "phone.jpg", 8, _gradient(40, 20))
    dataset = _dataset(tmp_path, "phone.jpg", None)
    assert (dataset.coco.imgs[1]["width"], dataset.coco.imgs[1]["height"]) == (20, 40)
    assert dataset[0][0].size == (20, 40)


def test_an_image_over_pils_pixel_limit_is_one_error_naming_the_file_and_the_flag(tmp_path, monkeypatch):
    PIL.Image.fromarray(_gradient(64, 48)).save(tmp_path / "huge.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # 3072 pixels is over twice that
    with pytest.raises(DatasetError, match=r"huge\.png.*--max_image_pixels") as e:
        _dataset(tmp_path, "huge.png", (64, 48))[0]
    assert isinstance(e.value, DatasetReadError) and "\n" not in str(e.value)
    image, _ = _dataset(tmp_path, "huge.png", (64, 48), max_image_pixels=4000)[0]  # the flag raises it
    assert image.size == (64, 48)
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000  # only while the data set reads
    assert _dataset(tmp_path, "huge.png", (64, 48), max_image_pixels=0)[0][0].size == (64, 48)  # no limit


def test_the_coco_layout_reads_the_stored_pixels_as_the_public_code_does(tmp_path):
    """COCO's annotations were drawn on the stored pixels; an export's on what the tool showed."""
    entry = {"id": 1, "file_name": "phone.jpg", "width": 40, "height": 20}
    data = {"images": [entry], "annotations": boxes([entry], [1]), "categories": categories({1: "a"})}
    layouts = {"coco": ("val2017", "annotations/instances_val2017.json"),
               "export": ("valid", "valid/_annotations.coco.json")}
    for name, (folder, ann_file) in layouts.items():
        (tmp_path / name / folder).mkdir(parents=True)
        (tmp_path / name / ann_file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name / ann_file).write_text(json.dumps(data))
        _with_orientation(tmp_path / name / folder / "phone.jpg", 3, _gradient(40, 20))  # turned 180 degrees
    with PIL.Image.open(tmp_path / "coco" / "val2017" / "phone.jpg") as img:
        stored = np.asarray(img.convert("RGB"))
    parser = get_args_parser()
    coco = build_dataset("val", parser.parse_args(["--coco_path", str(tmp_path / "coco")])).get_image(1)
    export = build_dataset("val", parser.parse_args(["--coco_path", str(tmp_path / "export")])).get_image(1)
    np.testing.assert_array_equal(np.asarray(coco), stored)
    np.testing.assert_array_equal(np.asarray(export), stored[::-1, ::-1])
