"""Error types that modules which must not import each other both raise.

``CheckpointError`` is raised by ``util.checkpoint`` (reading and loading checkpoint files, below
``models``) and by ``util.hf`` (Hugging Face folders, converted by building our model, so above
``models``): defined here, below both.
"""


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model."""
