"""The published DETR checkpoints (hub files holding only ``model``) evaluate as published: recognised from
their keys, built with DETR's defaults and the typed flags, every weight loaded strictly; the BatchFormerV2
weights are the only ones a file may lack, and only where the layer does not run."""
import json
from pathlib import Path

import pytest
import torch

import util.from_checkpoint as from_checkpoint
from util.args import get_args_parser, parse_args
from util.checkpoint import CheckpointError

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "state_dict"


def _published(layout: str) -> dict:
    """A state dict in a published layout, with random values (so that a tensor loaded in the wrong place
    shows), one tensor under the names aliases.json groups."""
    g = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=g)
             for name, shape in json.loads((REFERENCE / f"{layout}.json").read_text())}
    for first, *others in json.loads((REFERENCE / "aliases.json").read_text())[layout]:
        state.update(dict.fromkeys(others, state[first]))
    return state


def _evaluate(monkeypatch, state: dict, *typed: str):
    """test.py's path: the file (only ``model``), the flags the user typed."""
    monkeypatch.setattr(from_checkpoint, "load_checkpoint_or_folder", lambda path: {"model": state})
    args = parse_args(get_args_parser(), ["--no_pretrained_backbone", *typed])
    return from_checkpoint.detector_from_checkpoint("detr-hub.pth", "cpu", args,
                                                    from_checkpoint.typed_flags(typed))


@pytest.mark.parametrize("layout, typed", [
    ("detr", []),
    ("detr_dc5", ["--dilation"]),
    ("detr_panoptic", ["--masks", "--dataset_file", "coco_panoptic"]),
    ("detr", ["--bf", "3", "--insert_idx", "0"]),  # a BatchFormerV2 run's flags: the layer is skipped
    ("detr_bf_noshare", ["--bf", "3", "--insert_idx", "0", "--share_bf", "0"]),
])
def test_a_published_file_loads_every_weight(monkeypatch, capsys, layout, typed):
    state = _published(layout)
    loaded = _evaluate(monkeypatch, state, *typed)
    assert loaded.args.meta_arch == "detr" and loaded.args.num_queries == 100
    assert "records no --meta_arch; its keys are those of --meta_arch detr" in capsys.readouterr().out
    ours = loaded.model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in state.items())
    missing = sorted(set(ours) - set(state))
    assert all("bf" in k.split(".") for k in missing) and bool(missing) == (layout == "detr" and bool(typed))


def test_a_file_missing_a_weight_the_model_uses_is_refused(monkeypatch):
    state = _published("detr")
    del state["transformer.decoder.norm.weight"]
    with pytest.raises(CheckpointError, match="transformer.decoder.norm.weight"):
        _evaluate(monkeypatch, state)
