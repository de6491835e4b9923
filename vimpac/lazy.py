"""Package-level names resolved on first use (PEP 562).

`vimpac --help` imports every area's commands module, so a package's `__init__` must not import
torch; its public names (`vimpac.model.VimpacForClassification`, ...) are looked up in their
submodule the first time they are used:

    _EXPORTS = {"VimpacBackbone": "backbone", ...}   # name -> submodule
    __all__ = sorted(_EXPORTS)
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, MutableMapping


def lazy_exports(package: str, exports: Mapping[str, str],
                 namespace: MutableMapping[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`, whose names `exports` maps to
    the submodules that define them; `namespace` is the package's `globals()`."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value  # later lookups find it without coming here
        return value

    def __dir__() -> list[str]:
        # The lazy names too, so that notebooks complete them before their first use.
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
