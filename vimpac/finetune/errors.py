"""The fine-tuning area's one exception family."""

from __future__ import annotations


class FinetuneError(ValueError):
    """A fine-tuning / evaluation / probe / embedding input is wrong: a store without labels, a
    checkpoint that is not a model folder, an unknown recipe, mismatched features. The message
    names the file or field and what was expected."""
