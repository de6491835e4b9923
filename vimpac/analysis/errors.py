"""The analysis area's exception family."""

from __future__ import annotations


class AnalysisError(ValueError):
    """Bad input to an analysis command (a store, run folder, video or option); the message names
    the file or argument and what was expected."""
