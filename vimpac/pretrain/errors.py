"""The pre-training area's exception family."""

from __future__ import annotations


class PretrainError(ValueError):
    """Bad input to masking or to the pre-training losses; the message names the argument or
    field and what was expected."""
