"""A Hugging Face model folder on disk: what it holds, reading it as data, writing one.

``is_hf_folder`` needs nothing but ``os``: the flag checks (``util.args``) recognise a folder given to
``--resume`` with it, before torch is imported.
"""
from __future__ import annotations

import json
import os

from util.atomic import write_atomically
from util.errors import CheckpointError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"


class HFCheckpointError(CheckpointError):
    """A Hugging Face folder that is unreadable, or describes a model ours cannot represent (or the
    reverse: one of our checkpoints that transformers cannot represent)."""


def is_hf_folder(path: str) -> bool:
    """True for a folder with ``config.json`` and a weights file (what ``save_pretrained`` writes)."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and any(
        os.path.isfile(os.path.join(path, name)) for name in (SAFETENSORS_FILE, SAFETENSORS_INDEX, BIN_FILE))


def _read_safetensors(path: str) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for a bad header or a short file
        raise HFCheckpointError(f"cannot read {path}: {e}") from e


def _read_bin(path: str) -> dict:
    """``pytorch_model.bin``: a plain state dict, so torch's default weights-only unpickler suffices."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle with code in it, another format: all unreadable
        raise HFCheckpointError(f"cannot read {path} as a weights-only torch file: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HFCheckpointError(f"{path}: expected a state dict (names to tensors)")
    return state


def read_hf_folder(folder: str) -> tuple[dict, dict]:
    """(config dict, state dict) of a transformers checkpoint folder, read without running its code."""
    config_path = os.path.join(folder, CONFIG_FILE)
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as e:
        raise HFCheckpointError(f"cannot read {config_path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise HFCheckpointError(f"{config_path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise HFCheckpointError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    if os.path.isfile(os.path.join(folder, SAFETENSORS_FILE)):
        return config, _read_safetensors(os.path.join(folder, SAFETENSORS_FILE))
    index_path = os.path.join(folder, SAFETENSORS_INDEX)
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise HFCheckpointError(f"{index_path}: expected a JSON object with a 'weight_map' ({e})") from e
        state: dict = {}
        for shard in shards:
            state.update(_read_safetensors(os.path.join(folder, shard)))
        return config, state
    bin_path = os.path.join(folder, BIN_FILE)
    if not os.path.isfile(bin_path):
        raise HFCheckpointError(f"{folder}: no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {BIN_FILE} beside "
                                f"{CONFIG_FILE}")
    return config, _read_bin(bin_path)


def write_hf_folder(folder: str, config: dict, tensors: dict) -> None:
    """``model.safetensors`` and ``config.json`` into ``folder`` (created), each file replaced atomically
    (an interrupted write leaves the previous file whole)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    write_atomically(os.path.join(folder, SAFETENSORS_FILE),
                     lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))

    def write_config(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")

    write_atomically(os.path.join(folder, CONFIG_FILE), write_config)
