"""util.hf for DETR and Conditional DETR (and their segmentation models) against transformers' own models:
names and shapes against the published checkpoints' layouts (tests/data/state_dict), folders that transformers
loads strictly and that come back bit-equal, the flags a folder gives, and the layers whose weights
transformers splits, run both ways (our model for these detectors is not the converter's to build)."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (a test dependency in requirements.txt: "
                           "`make deps`); the Hugging Face conversion tests need it as their reference")
pytest.importorskip("safetensors", reason="safetensors is not installed (requirements.txt: `make deps`)")

from safetensors.torch import load_file  # noqa: E402

from datasets.coco_names import COCO_CATEGORY_NAMES  # noqa: E402
from models.position_encoding import PositionEmbeddingLearned  # noqa: E402
from tests.hf_models import ALL_STAGES, RESNET18, small_detr_model  # noqa: E402
from tools import convert_hf  # noqa: E402
from util.checkpoint import load_checkpoint  # noqa: E402
from util.hf.convert import (  # noqa: E402
    HFCheckpointError,
    args_from_hf_config,
    hf_config_from_args,
    hf_to_ours,
    load_hf_checkpoint,
    save_hf_folder,
)
from util.misc import nested_tensor_from_tensor_list  # noqa: E402

# The published checkpoints' layouts: [name, shape] in state-dict order (as tests/models/test_state_dict.py).
REFERENCE = Path(__file__).resolve().parents[2] / "data" / "state_dict"

# reference layout -> (transformers class, config class, config fields at the published size)
PUBLISHED = {
    "detr": ("DetrForObjectDetection", "DetrConfig", {"num_labels": 91}),
    "detr_dc5": ("DetrForObjectDetection", "DetrConfig", {"num_labels": 91, "dilation": True}),
    "detr_panoptic": ("DetrForSegmentation", "DetrConfig", {"num_labels": 250}),
    "conditional_detr": ("ConditionalDetrForObjectDetection", "ConditionalDetrConfig", {"num_labels": 91}),
}


def _reference(name: str) -> dict[str, tuple]:
    return {key: tuple(shape) for key, shape in json.loads((REFERENCE / f"{name}.json").read_text())}


def _published_config(name: str) -> tuple[str, dict]:
    """(transformers class, config.json) of the published model the reference layout ``name`` is."""
    model_class, config_class, fields = PUBLISHED[name]
    if fields.get("dilation"):  # DC5: only transformers' timm backbone has dilation
        pytest.importorskip("timm", reason="transformers builds its DC5 (timm) backbone only with timm")
        config = getattr(transformers, config_class)(use_timm_backbone=True, backbone="resnet50",
                                                     use_pretrained_backbone=False, **fields)
    else:
        stages = ALL_STAGES if "Segmentation" in model_class else ["stage4"]
        backbone = transformers.ResNetConfig(out_features=stages)
        config = getattr(transformers, config_class)(backbone_config=backbone, use_pretrained_backbone=False,
                                                     **fields)
    return model_class, {**config.to_dict(), "architectures": [model_class]}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_transformers_model_converts_to_the_published_layout(name):
    """transformers' model at the published size (built on the meta device: names and shapes only, its
    in-memory names) converts to exactly the keys and shapes of the published checkpoint."""
    model_class, config = _published_config(name)
    config_class = getattr(transformers, PUBLISHED[name][1])
    with torch.device("meta"):
        model = getattr(transformers, model_class)(config_class.from_dict(config))
    args = args_from_hf_config(config)
    ours = hf_to_ours(model.state_dict(), args)
    assert {key: tuple(t.shape) for key, t in ours.items()} == _reference(name)
    assert args.meta_arch == name.split("_dc5")[0].split("_panoptic")[0]
    assert (args.masks, args.dilation) == (name == "detr_panoptic", name == "detr_dc5")
    assert args.num_classes == (250 if name == "detr_panoptic" else 91) and args.num_feature_levels == 1
    assert args.num_queries == (300 if name == "conditional_detr" else 100)


@pytest.mark.parametrize("name, batchformer", [
    ("detr", {}), ("detr_dc5", {}), ("detr_panoptic", {}), ("conditional_detr", {}),
    ("detr_bf", {"bf": 3, "insert_idx": [0], "share_bf": 1}),
    ("detr_bf_noshare", {"bf": 3, "insert_idx": [0], "share_bf": 0}),
])
def test_published_layout_round_trips_through_from_pretrained(tmp_path, name, batchformer):
    """A random state dict in the published layout: the folder loads strictly in transformers and comes
    back bit-equal (the BatchFormerV2 layer, skipped at inference, stays behind)."""
    layout = _reference(name)
    model_class, config = _published_config(name.replace("_bf_noshare", "").replace("_bf", ""))
    args = args_from_hf_config(config)
    for flag, value in batchformer.items():
        setattr(args, flag, value)
    g = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=g) for key, shape in layout.items()}
    notes = []
    save_hf_folder({"model": state, "args": args}, str(tmp_path / "hf"),
                   naming="timm" if args.dilation else "resnet", progress=notes.append)
    assert notes[-1].startswith(f"wrote {len(load_file(tmp_path / 'hf' / 'model.safetensors'))} tensors")
    reloaded, info = _from_pretrained(model_class, tmp_path / "hf")
    assert not any(info.values()), info
    back = hf_to_ours(reloaded.state_dict(), args)
    kept = {key: t for key, t in state.items() if "bf" not in key.split(".")}
    assert len(kept) < len(state) if batchformer else len(kept) == len(state)
    assert sorted(back) == sorted(kept) and all(torch.equal(back[k], kept[k]) for k in kept)


_ARCHITECTURE_FIELDS = ("model_type", "architectures", "d_model", "encoder_layers", "decoder_layers",
                        "encoder_attention_heads", "encoder_ffn_dim", "num_queries",
                        "position_embedding_type")


def _from_pretrained(model_class: str, folder):
    """(model, loading info) of transformers' ``model_class`` from ``folder``."""
    return getattr(transformers, model_class).from_pretrained(folder, output_loading_info=True)


def _args_of(hf):
    """Our flags for transformers' model ``hf``, from its config as a saved config.json holds it."""
    return args_from_hf_config({**hf.config.to_dict(), "architectures": [type(hf).__name__]})


@pytest.mark.parametrize("model_class, num_labels, decoder_layers", [
    ("DetrForObjectDetection", 20, 1), ("DetrForSegmentation", 250, 2),
    ("ConditionalDetrForObjectDetection", 91, 2), ("ConditionalDetrForSegmentation", 20, 1),
])
def test_saved_folders_convert_both_ways_with_the_tool(tmp_path, model_class, num_labels, decoder_layers):
    """save_pretrained's folder -> ours -> a folder with the very tensors of the first, that transformers
    loads strictly; the in-memory names convert alike."""
    hf = small_detr_model(model_class, num_labels, decoder_layers)
    hf.save_pretrained(tmp_path / "hf")
    assert convert_hf.main(["to-ours", str(tmp_path / "hf"), str(tmp_path / "ours.pth")]) == 0
    ours = load_checkpoint(str(tmp_path / "ours.pth"))
    args = ours["args"]
    assert args.meta_arch == ("conditional_detr" if model_class.startswith("Conditional") else "detr")
    assert (args.masks, args.num_classes, args.dec_layers) == ("Segmentation" in model_class, num_labels,
                                                               decoder_layers)
    in_memory = hf_to_ours(hf.state_dict(), args)
    assert sorted(in_memory) == sorted(ours["model"])
    assert all(torch.equal(in_memory[k], ours["model"][k]) for k in in_memory)

    assert convert_hf.main(["to-hf", str(tmp_path / "ours.pth"), str(tmp_path / "back")]) == 0
    first, written = (load_file(tmp_path / folder / "model.safetensors") for folder in ("hf", "back"))
    assert sorted(written) == sorted(first) and all(torch.equal(written[k], first[k]) for k in first)
    before, after = (json.loads((tmp_path / folder / "config.json").read_text()) for folder in ("hf", "back"))
    assert {f: after[f] for f in _ARCHITECTURE_FIELDS} == {f: before[f] for f in _ARCHITECTURE_FIELDS}
    assert len(after["id2label"]) == num_labels
    if num_labels == 91:  # --dataset_file coco: the names transformers' published configs have
        assert after["id2label"]["1"] == "person" and after["id2label"]["12"] == "N/A"
    reloaded, info = _from_pretrained(model_class, tmp_path / "back")
    assert not any(info.values()), info


def test_flags_of_a_published_style_config():
    """A config.json as the hub's DETR R50 holds it (transformers 4's top-level timm fields, COCO's names)
    gives every flag that decides the model, the losses and the matcher."""
    id2label = {str(i): COCO_CATEGORY_NAMES.get(i, "N/A") for i in range(91)}
    config = {"model_type": "detr", "architectures": ["DetrForObjectDetection"], "use_timm_backbone": True,
              "backbone": "resnet50", "dilation": False, "backbone_config": None, "id2label": id2label,
              "d_model": 256, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
              "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048,
              "num_queries": 100, "dropout": 0.1, "position_embedding_type": "sine", "class_cost": 1,
              "bbox_cost": 5, "giou_cost": 2,
              "bbox_loss_coefficient": 5, "giou_loss_coefficient": 2, "mask_loss_coefficient": 1,
              "dice_loss_coefficient": 1, "eos_coefficient": 0.1, "auxiliary_loss": False}
    args = args_from_hf_config(config)
    expected = {"meta_arch": "detr", "num_classes": 91, "class_names": COCO_CATEGORY_NAMES,
                "backbone": "resnet50", "dilation": False, "hidden_dim": 256, "nheads": 8, "enc_layers": 6,
                "dec_layers": 6,
                "dim_feedforward": 2048, "num_queries": 100, "num_feature_levels": 1, "pre_norm": False,
                "masks": False, "aux_loss": True, "eos_coef": 0.1, "set_cost_class": 1, "set_cost_bbox": 5,
                "set_cost_giou": 2, "cls_loss_coef": 1, "bbox_loss_coef": 5, "giou_loss_coef": 2,
                "dropout": 0.1, "position_embedding": "sine", "dataset_file": "coco"}
    assert {flag: getattr(args, flag) for flag in expected} == expected
    # Back: the same fields, the names with N/A at COCO's unused ids.
    written = hf_config_from_args(args, naming="timm")
    assert {k: written[k] for k in config if k not in ("auxiliary_loss",)} == {
        k: config[k] for k in config if k not in ("auxiliary_loss",)}

    conditional = args_from_hf_config({"model_type": "conditional_detr", "id2label": id2label,
                                       "architectures": ["ConditionalDetrForObjectDetection"]})
    flags = ("meta_arch", "num_queries", "set_cost_class", "cls_loss_coef", "focal_alpha", "dim_feedforward")
    assert [getattr(conditional, f) for f in flags] == ["conditional_detr", 300, 2, 2, 0.25, 2048]


@pytest.mark.parametrize("changes, field", [
    ({"normalize_before": True}, "normalize_before"),
    ({"architectures": ["DetrModel"]}, "architectures"),
    ({"decoder_attention_heads": 4}, "decoder_attention_heads"),
    ({"model_type": "rt_detr"}, "model_type"),
])
def test_refuses_configs_we_cannot_represent(changes, field):
    config = {"model_type": "detr", "architectures": ["DetrForObjectDetection"], **changes}
    with pytest.raises(HFCheckpointError, match=f"config.json: {field} ="):
        args_from_hf_config(config)


def test_refuses_to_write_what_transformers_cannot_represent():
    args = args_from_hf_config({"model_type": "detr", "architectures": ["DetrForObjectDetection"]})
    args.pre_norm = True
    with pytest.raises(HFCheckpointError, match="--pre_norm: transformers' DETR-like models are post-norm"):
        hf_config_from_args(args)
    deformable = args_from_hf_config({"model_type": "deformable_detr"})
    deformable.masks = True
    with pytest.raises(HFCheckpointError, match="--masks: transformers' DeformableDetrForObjectDetection"):
        hf_config_from_args(deformable)


def test_a_loss_weight_transformers_cannot_hold_is_left_out_with_a_note(tmp_path):
    """transformers' configs hold the costs and loss weights as integers (and refuse 1.5): the folder is
    written without the field, and says so."""
    hf = small_detr_model("DetrForObjectDetection", 5, 1)
    hf.save_pretrained(tmp_path / "hf")
    checkpoint = load_hf_checkpoint(str(tmp_path / "hf"))
    checkpoint["args"].set_cost_class = 1.5
    notes = []
    save_hf_folder(checkpoint, str(tmp_path / "back"), progress=notes.append)
    assert "class_cost" not in json.loads((tmp_path / "back" / "config.json").read_text())
    assert any("--set_cost_class 1.5 is not written" in note for note in notes)
    transformers.DetrForObjectDetection.from_pretrained(tmp_path / "back")


# --- numerics: the layers whose tensors transformers splits or renames ----------------------------------

def _attention(state: dict, prefix: str, query, key, value, heads: int):
    """torch's nn.MultiheadAttention (batch first) with our packed weights under ``prefix``."""
    channels = query.shape[-1]
    attention = nn.MultiheadAttention(channels, heads, batch_first=True)
    attention.load_state_dict({name: state[f"{prefix}.{name}"] for name in attention.state_dict()})
    return attention(query, key, value, need_weights=False)[0]


def _affine(state: dict, prefix: str, x, norm: bool = False):
    weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
    return F.layer_norm(x, weight.shape, weight, bias) if norm else F.linear(x, weight, bias)


def _ffn(state: dict, prefix: str, x):
    return _affine(state, f"{prefix}.linear2", F.relu(_affine(state, f"{prefix}.linear1", x)))


def _post_norm_encoder_layer(state: dict, prefix: str, src, pos, heads: int):
    """The published DETR's post-norm layer: self-attention with the position added to queries and keys,
    then the FFN, each followed by its norm."""
    attended = _attention(state, f"{prefix}.self_attn", src + pos, src + pos, src, heads)
    src = _affine(state, f"{prefix}.norm1", src + attended, norm=True)
    return _affine(state, f"{prefix}.norm2", src + _ffn(state, prefix, src), norm=True)


def _post_norm_decoder_layer(state: dict, prefix: str, tgt, query_pos, memory, pos, heads: int):
    """Self-attention (query position on queries and keys), cross-attention (query position on the
    queries, the encoder's on the memory keys), FFN; norm1, norm2, norm3 after each."""
    q = tgt + query_pos
    tgt = _affine(state, f"{prefix}.norm1", tgt + _attention(state, f"{prefix}.self_attn", q, q, tgt, heads),
                  norm=True)
    cross = _attention(state, f"{prefix}.multihead_attn", tgt + query_pos, memory + pos, memory, heads)
    tgt = _affine(state, f"{prefix}.norm2", tgt + cross, norm=True)
    return _affine(state, f"{prefix}.norm3", tgt + _ffn(state, prefix, tgt), norm=True)


@pytest.mark.parametrize("model_class", ["DetrForObjectDetection", "ConditionalDetrForObjectDetection"])
def test_layers_run_the_same_with_our_names(model_class):
    """transformers' encoder layer (both detectors), DETR's decoder layer and the heads against the same
    layers written here from our names with torch's nn.MultiheadAttention: the q, k, v pieces land in
    the packed in_proj in order and every norm and linear in its place."""
    hf = small_detr_model(model_class, 5, 1)
    state = hf_to_ours(hf.state_dict(), _args_of(hf))
    g = torch.Generator().manual_seed(1)
    src, pos = torch.randn(2, 12, 32, generator=g), torch.randn(2, 12, 32, generator=g)
    with torch.no_grad():
        theirs = hf.model.encoder.layers[0](src, attention_mask=None, spatial_position_embeddings=pos)
        ours = _post_norm_encoder_layer(state, "transformer.encoder.layers.0", src, pos, heads=8)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        tgt, query_pos = torch.randn(2, 7, 32, generator=g), torch.randn(2, 7, 32, generator=g)
        if model_class == "DetrForObjectDetection":
            theirs = hf.model.decoder.layers[0](tgt, object_queries_position_embeddings=query_pos,
                                                encoder_hidden_states=src, spatial_position_embeddings=pos)
            ours = _post_norm_decoder_layer(state, "transformer.decoder.layers.0", tgt, query_pos, src, pos,
                                            heads=8)
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        torch.testing.assert_close(_affine(state, "class_embed", tgt), hf.class_labels_classifier(tgt),
                                   atol=0, rtol=0)
        box = tgt
        for i in range(3):
            box = _affine(state, f"bbox_embed.layers.{i}", box)
            box = F.relu(box) if i < 2 else box
        torch.testing.assert_close(box, hf.bbox_predictor(tgt), atol=1e-6, rtol=0)


def test_learned_position_encoding_is_transformers_with_our_names():
    hf = transformers.DetrForObjectDetection(transformers.DetrConfig(
        backbone_config=transformers.ResNetConfig(out_features=["stage4"], **RESNET18),
        use_pretrained_backbone=False, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=8, decoder_attention_heads=8, position_embedding_type="learned")).eval()
    args = _args_of(hf)
    assert args.position_embedding == "learned"
    state = hf_to_ours(hf.state_dict(), args)
    ours = PositionEmbeddingLearned(16)
    ours.load_state_dict({k[len("backbone.1."):]: v for k, v in state.items() if k.startswith("backbone.1.")},
                         strict=True)
    images = nested_tensor_from_tensor_list([torch.zeros(3, 5, 9), torch.zeros(3, 4, 6)])
    with torch.no_grad():
        theirs = hf.model.position_embedding(images.tensors.shape, images.tensors.device, torch.float32,
                                             mask=~images.mask)
        torch.testing.assert_close(ours(images), theirs, atol=0, rtol=0)
    assert math.isclose(args.position_embedding_scale, 2 * math.pi)
