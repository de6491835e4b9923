"""The model area's one exception family."""

from __future__ import annotations


class ModelError(ValueError):
    """A model config, layout, input or weight file is wrong; the message names it."""


class CheckpointError(ModelError):
    """A checkpoint folder or file is missing, malformed, unsafe or does not fit the model."""
