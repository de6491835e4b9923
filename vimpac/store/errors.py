"""The store's one exception family."""

from __future__ import annotations


class StoreError(ValueError):
    """A token store is missing, malformed, inconsistent or was made with other settings.

    The message names the store folder or file and the field that is wrong, and what was
    expected, so a user can tell a wrong `--fps` from a damaged shard.
    """
