"""What a Hugging Face model folder looks like on disk.

Kept apart from the converter (util/hf_checkpoint.py, which builds models) so that the flag checks
can recognise a folder given to ``--resume`` without importing the model package.
"""
import os

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"


def is_hf_folder(path: str) -> bool:
    """True for a folder with ``config.json`` and a weights file (what ``save_pretrained`` writes)."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and any(
        os.path.isfile(os.path.join(path, name)) for name in (SAFETENSORS_FILE, SAFETENSORS_INDEX, BIN_FILE))
