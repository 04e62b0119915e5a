"""State dicts of the published flag sets: keys, order, shapes and shared tensors.

The reference layouts in tests/data/state_dict are those of the public checkpoints (see
docs/design/checkpoints.md): `<config>.json` lists `[name, shape]` in state-dict order, `aliases.json` the
key groups that are one tensor.
"""

import json
import os

import pytest

from models import build_model
from util.args import get_args_parser, parse_args

pytestmark = pytest.mark.usefixtures("one_thread")


REF_DIR = os.path.join(os.path.dirname(__file__), "..", "data", "state_dict")
CONFIGS = {
    "base": [],
    "single_scale": ["--num_feature_levels", "1"],
    "refine": ["--with_box_refine"],
    "two_stage": ["--with_box_refine", "--two_stage"],
    "bf": ["--bf", "1", "--insert_idx", "0"],
    "bf_noshare": ["--bf", "1", "--insert_idx", "0", "--share_bf", "0"],
    "bf_noshare_multi": ["--bf", "1", "--insert_idx", "0", "--share_bf", "0", "--insert_idx", "2"],
    "bf_two_stage": ["--with_box_refine", "--two_stage", "--bf", "1", "--insert_idx", "0", "--share_bf", "0"],
    "detr": ["--meta_arch", "detr"],
    "detr_dc5": ["--meta_arch", "detr", "--dilation"],
    "detr_panoptic": ["--meta_arch", "detr", "--masks", "--dataset_file", "coco_panoptic"],
    "detr_bf": ["--meta_arch", "detr", "--bf", "3", "--insert_idx", "0"],
    "detr_bf_noshare": ["--meta_arch", "detr", "--bf", "3", "--insert_idx", "0", "--share_bf", "0"],
}

@pytest.fixture(scope="module")
def aliases():
    with open(os.path.join(REF_DIR, "aliases.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_keys_order_shapes_and_sharing(config, aliases):
    # parse_args: the detector's own defaults (--meta_arch) under the flags, as main.py parses them
    model = build_model(parse_args(get_args_parser(), ["--no_pretrained_backbone", *CONFIGS[config]]))[0]
    sd = model.state_dict()
    with open(os.path.join(REF_DIR, f"{config}.json")) as f:
        reference = [(name, list(shape)) for name, shape in json.load(f)]
    got = [(name, list(t.shape)) for name, t in sd.items()]
    missing = [n for n, _ in reference if n not in sd]
    extra = [n for n, _ in got if n not in dict(reference)]
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    assert got == reference

    # The groups of aliases.json, and no others, are one tensor.
    by_storage = {}
    for name, t in sd.items():
        by_storage.setdefault((t.data_ptr(), t.dtype, tuple(t.shape)), []).append(name)
    groups = sorted(sorted(g) for g in by_storage.values() if len(g) > 1)
    assert groups == sorted(sorted(g) for g in aliases[config])

    # A checkpoint of this layout loads strictly.
    assert not any(".bf." in k for k in sd) or "bf" in config.split("_")
    result = model.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
