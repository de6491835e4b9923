"""Device names from the command line and configs: "auto" and a check that torch can use one here."""

from __future__ import annotations

import torch

from vimpac.config import ConfigError


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; any other name unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device: str, where: str) -> None:
    """Raise `ConfigError` (naming `where`, e.g. "--device") unless torch can use `device` here."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{where}: expected cpu, cuda or cuda:N, got {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}: {device!r} asked, but torch sees no CUDA device here "
                              f"(torch {torch.__version__}); use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"{where}: {device!r} asked, but there are {torch.cuda.device_count()} CUDA devices")
    elif parsed.type != "cpu":
        raise ConfigError(f"{where}: expected cpu, cuda or cuda:N, got {device!r}")


def usable_device(device: str, where: str) -> str:
    """`device` with "auto" resolved, after checking that torch can use it here (`check_device`)."""
    device = resolve_device(device)
    check_device(device, where)
    return device
