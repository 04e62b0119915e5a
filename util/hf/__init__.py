"""Hugging Face transformers checkpoints: read them as ours, write ours as them.

A transformers checkpoint folder holds ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``). Both are read as data: JSON, safetensors
and ``torch.load(weights_only=True)``; no code from the folder or from transformers runs, and
transformers need not be installed.

- ``convert``: the public API (``load_hf_checkpoint``, ``save_hf_folder``, ``hf_to_ours``,
  ``ours_to_hf``, ``args_from_hf_config``, ``hf_config_from_args``) and the one conversion engine.
- ``deformable_detr``, ``detr``, ``conditional_detr``: one ``HFModelType`` per transformers
  ``model_type``: its tensor names against ours, its ``config.json`` fields against our flags.
- ``spec`` (what a model type declares, and the name rules), ``backbone`` (the ResNet, named as
  transformers' own or as timm's), ``config`` (the fields all model types share), ``folder`` (files).

This package is imported by ``util.checkpoint`` (to read a folder given as a checkpoint) and imports
neither it nor, at import time, ``models``; nothing here runs on import.
"""
