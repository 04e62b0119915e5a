"""The flags of the tiny model the tests build: one definition, varied per test file by overrides.

A ResNet-18 without pretrained weights, 32 channels, one encoder and one decoder layer, 10 queries
and one feature level on the toy data set: it builds in well under a second and trains a step in
about as long on a CPU core. ``tiny_flags(*overrides)`` appends a file's own flags, which argparse
applies after these (the last value of a flag wins).
"""

TINY_MODEL_FLAGS = (
    "--dataset_file", "toy", "--device", "cpu", "--backbone", "resnet18", "--no_pretrained_backbone",
    "--hidden_dim", "32", "--dim_feedforward", "64", "--enc_layers", "1", "--dec_layers", "1",
    "--nheads", "2", "--num_queries", "10", "--num_feature_levels", "1", "--enc_n_points", "2",
    "--dec_n_points", "2",
)


def tiny_flags(*overrides: str) -> list[str]:
    """The tiny model's flags followed by ``overrides``."""
    return [*TINY_MODEL_FLAGS, *overrides]
