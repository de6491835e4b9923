"""The sharded token store and `vimpac tokenize`.

Reading (pre-training, fine-tuning): `TokenStore.open(path, expect_...)`, `store.tokens(i)`,
`store.clip(i, start, length)`. Writing: `tokenize_videos(...)`. Checking: `verify_store`,
`store_info`. The layout is described in `vimpac.store.format` and docs/store.md.
"""

from vimpac.lazy import lazy_exports

# Looked up on first use: the writer pulls in the video reader and tqdm, readers of a store need neither.
_EXPORTS = {"StoreEntry": "reader", "StoreError": "errors", "TokenStore": "reader",
            "tokenize_videos": "tokenize", "TokenizeReport": "tokenize",
            "verify_store": "verify", "store_info": "verify"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
