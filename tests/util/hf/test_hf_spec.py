"""util.hf.spec: a name rule read both ways, tensors split into pieces, and prefixes."""
from util.hf.spec import NameMap, Rule, packed_qkv


def test_a_rule_reads_both_ways():
    rule = Rule("encoder.layers.{i}.norm1.{p}", "model.encoder.layers.{i}.attn_norm.{p}")
    assert rule.hf_names("encoder.layers.3.norm1.bias") == ["model.encoder.layers.3.attn_norm.bias"]
    assert rule.our_name("model.encoder.layers.3.attn_norm.bias") == ("encoder.layers.3.norm1.bias", 0)
    # Placeholders match what they say: a layer index, a weight or a bias; dots are literal.
    assert rule.hf_names("encoder.layers.x.norm1.bias") is None
    assert rule.hf_names("encoder.layers.3.norm1.running_mean") is None
    assert rule.hf_names("encoder_layers.3.norm1.bias") is None


def test_a_packed_projection_is_three_pieces_in_order():
    rule = packed_qkv("transformer.decoder.layers.{i}.self_attn", "model.decoder.layers.{i}.self_attn")
    assert rule.hf_names("transformer.decoder.layers.0.self_attn.in_proj_weight") == [
        f"model.decoder.layers.0.self_attn.{p}_proj.weight" for p in "qkv"]
    assert rule.our_name("model.decoder.layers.0.self_attn.k_proj.bias") == (
        "transformer.decoder.layers.0.self_attn.in_proj_bias", 1)


def test_a_prefixed_map_renames_only_its_own_names():
    names = NameMap((Rule("class_embed.{p}", "class_labels_classifier.{p}"),),
                    runtime=((r"\.o_proj\.", ".out_proj."),)).prefixed("detr.", "conditional_detr.")
    assert names.hf_names("detr.class_embed.weight") == ["conditional_detr.class_labels_classifier.weight"]
    assert names.hf_names("class_embed.weight") is None
    assert names.our_name("conditional_detr.class_labels_classifier.bias") == ("detr.class_embed.bias", 0, 1)
    assert names.saved_name("conditional_detr.x.o_proj.weight") == "conditional_detr.x.out_proj.weight"
    assert names.saved_name("mask_head.x.o_proj.weight") == "mask_head.x.o_proj.weight"
