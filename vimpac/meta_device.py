"""Building a module on the meta device: its names, shapes and dtypes, without memory or values.

Used to check a folder's tensors against the network its config describes before anything is
allocated (model folders, DALL-E tokenizer folders) and to count a preset's parameters.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch.overrides import TorchFunctionMode

M = TypeVar("M", bound=torch.nn.Module)


class _SkipNormalInit(TorchFunctionMode):
    """Skips `normal_` initialisations of meta tensors: a meta tensor holds no values, and torch
    runs normal_ on one through a Python reference that imports torch._dynamo, seconds once per
    process (which loading a model or tokenizer folder would pay for nothing)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) == "normal_":  # torch.nn.init.normal_ and Tensor.normal_
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if tensors and tensors[0].is_meta:
                return tensors[0]
        return func(*args, **kwargs)


def meta_model(build: Callable[[], M]) -> M:
    """`build()` on the meta device: the module's names, shapes and dtypes, without memory."""
    with torch.device("meta"), _SkipNormalInit():
        return build()
