"""Error types that modules which must not import each other both raise.

``CheckpointError`` is raised by ``util.checkpoint`` (reading and loading checkpoint files) and by
``util.hf`` (Hugging Face folders, which ``util.checkpoint.load_checkpoint`` hands on): defined here,
below both, so that neither imports the other to name it.
"""


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model."""
