"""The sharded token store and `vimpac tokenize`.

Reading (pre-training, fine-tuning): `TokenStore.open(path, expect_...)`, `store.tokens(i)`,
`store.clip(i, start, length)`. Writing: `tokenize_videos(...)`. Checking: `verify_store`,
`store_info`. The layout is described in `vimpac.store.format` and docs/store.md.
"""

from vimpac.store.errors import StoreError
from vimpac.store.reader import StoreEntry, TokenStore

__all__ = ["StoreEntry", "StoreError", "TokenStore", "tokenize_videos", "TokenizeReport",
           "verify_store", "store_info"]


def __getattr__(name: str):
    # The writer pulls in the video reader and tqdm; readers of a store need neither.
    if name in ("tokenize_videos", "TokenizeReport"):
        from vimpac.store import tokenize

        return getattr(tokenize, name)
    if name in ("verify_store", "store_info"):
        from vimpac.store import verify

        return getattr(verify, name)
    raise AttributeError(f"module 'vimpac.store' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names too, so that notebooks complete them before their first use.
    return sorted(set(globals()) | set(__all__))
