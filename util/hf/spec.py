"""What one transformers ``model_type`` declares to the converter: ``HFModelType``, built from name
rules (``Rule``, ``NameMap``).

A rule pairs one of our state-dict names with the name(s) transformers saves the same tensor under,
as a template both ways: ``Rule("transformer.encoder.layers.{i}.norm1.{p}",
"model.encoder.layers.{i}.self_attn_layer_norm.{p}")``. Several transformers names mean that
transformers keeps our tensor as that many equal pieces along dim 0, in that order (the q, k, v
projections of a packed ``in_proj``).
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from util.hf.config import ConfigReader, Notes

# Placeholders of a rule's templates: an index, a Linear/LayerNorm leaf, a batch norm's leaf.
_PLACEHOLDERS = {"i": r"\d+", "j": r"\d+", "p": r"weight|bias", "bn": r"weight|bias|running_mean|running_var"}
QKV = ("q_proj", "k_proj", "v_proj")


def _pattern(template: str) -> re.Pattern:
    pieces = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(piece) if n % 2 == 0 else f"(?P<{piece}>{_PLACEHOLDERS[piece]})"
                    for n, piece in enumerate(pieces))
    return re.compile(regex)


class Rule:
    """Our tensor ``ours`` is transformers' ``hf`` (one name, or equal pieces along dim 0, in order)."""

    def __init__(self, ours: str, *hf: str) -> None:
        self.ours, self.hf = ours, hf
        self._ours = _pattern(ours)
        self._hf = [_pattern(name) for name in hf]

    def hf_names(self, key: str) -> list[str] | None:
        found = self._ours.fullmatch(key)
        return None if found is None else [name.format(**found.groupdict()) for name in self.hf]

    def our_name(self, name: str) -> tuple[str, int] | None:
        """(our name, which piece) for a transformers name this rule covers."""
        for piece, pattern in enumerate(self._hf):
            found = pattern.fullmatch(name)
            if found:
                return self.ours.format(**found.groupdict()), piece
        return None


def renamed(ours_prefix: str, hf_prefix: str, modules: dict[str, str], leaf: str = "{p}") -> list[Rule]:
    """A rule per submodule that only changes its name: ``{ours_prefix}{ours}.{leaf}`` is
    ``{hf_prefix}{hf}.{leaf}`` for each ``ours: hf`` of ``modules``."""
    return [Rule(f"{ours_prefix}{ours}.{leaf}", f"{hf_prefix}{hf}.{leaf}") for ours, hf in modules.items()]


def packed_qkv(ours: str, hf: str) -> Rule:
    """``nn.MultiheadAttention``'s packed input projection ``{ours}.in_proj_*`` against transformers'
    separate ``{hf}.q_proj``, ``k_proj``, ``v_proj``."""
    return Rule(f"{ours}.in_proj_{{p}}", *(f"{hf}.{proj}.{{p}}" for proj in QKV))


@dataclass(frozen=True)
class NameMap:
    """Rules for one part of a model, under a name prefix on each side; ``runtime``: (regex,
    replacement) pairs from the names of transformers' modules (>= 5.0, ``model.state_dict()``) to
    the names it saves (``save_pretrained``, hub files), applied before the rules."""

    rules: tuple[Rule, ...]
    runtime: tuple[tuple[str, str], ...] = ()
    ours_prefix: str = ""
    hf_prefix: str = ""

    def prefixed(self, ours_prefix: str, hf_prefix: str) -> NameMap:
        return NameMap(self.rules, self.runtime, ours_prefix + self.ours_prefix, hf_prefix + self.hf_prefix)

    def saved_name(self, name: str) -> str:
        if not name.startswith(self.hf_prefix):
            return name
        body = name[len(self.hf_prefix):]
        for pattern, replacement in self.runtime:
            body = re.sub(pattern, replacement, body)
        return self.hf_prefix + body

    def hf_names(self, key: str) -> list[str] | None:
        if not key.startswith(self.ours_prefix):
            return None
        for rule in self.rules:
            names = rule.hf_names(key[len(self.ours_prefix):])
            if names is not None:
                return [self.hf_prefix + name for name in names]
        return None

    def our_name(self, saved: str) -> tuple[str, int, int] | None:
        """(our name, piece, number of pieces) of a saved transformers name, None if not ours."""
        if not saved.startswith(self.hf_prefix):
            return None
        for rule in self.rules:
            found = rule.our_name(saved[len(self.hf_prefix):])
            if found is not None:
                return self.ours_prefix + found[0], found[1], len(rule.hf)
        return None


def _no_tie(name: str) -> str | None:
    return None


def _first(candidates: Sequence[list[str]]) -> list[str]:
    return list(candidates[0])


@dataclass(frozen=True)
class HFModelType:
    """A transformers ``model_type`` and our ``--meta_arch`` for it.

    ``detector``: tensor names of the detection model, backbone excepted (``util.hf.backbone`` adds
    it). ``segmentation``: transformers' class with DETR's mask head, None where it has none; the
    detector's names are then under ``detector_prefix`` there and under ``detr.`` in ours.
    ``mask_head``: the names of the mask head (and its attention map) of the segmentation model.
    ``read_config``: the flags particular to this type from config.json; ``write_config`` the reverse
    (the fields all types share are ``util.hf.config``'s). ``defaults``: transformers' defaults of
    the shared fields where this type's differ from the others', for a config.json that omits them.
    ``backbone_stages``: (masks, num_feature_levels) -> the ResNet stages the detector reads;
    ``all_stages_read``: whether transformers reads every stage it is given (else only the last ones).
    ``built_by_models``: ``models`` builds this detector, so every conversion is also checked against
    our model built on the meta device (shared tensors filled under each of their names, nothing
    missing, nothing left over, every shape). ``tie_source`` (a saved name -> the name transformers 5
    ties it to and saves instead) and ``saved_choice`` (of one shared tensor's transformers names,
    the ones ``save_pretrained`` writes) matter where our model shares tensors.
    """

    model_type: str
    meta_arch: str
    detection: str
    segmentation: str | None
    detector_prefix: str
    detector: NameMap
    read_config: Callable[[ConfigReader], dict]
    write_config: Callable[[argparse.Namespace, Notes], dict]
    backbone_stages: Callable[[bool, int], list[int]]
    all_stages_read: bool
    built_by_models: bool
    mask_head: NameMap | None = None
    defaults: dict = field(default_factory=dict)
    tie_source: Callable[[str], str | None] = _no_tie
    saved_choice: Callable[[Sequence[list[str]]], list[str]] = _first
