"""What machine is this? One place for the CPU / cores / load / versions line that benchmarks print
and that `train_report.json` records, so numbers can be read against the hardware they came from.

torch is imported lazily (only inside `machine_info` / `machine_line`, and only when asked for), so
importing this module costs nothing for code that does not otherwise need torch.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable

__all__ = ["best_of", "cpu_name", "load_average_1m", "machine_info", "machine_line", "resident_mib",
           "usable_cores"]


def cpu_name() -> str:
    """The CPU model ("model name" in /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int | None:
    """Cores this process may run on (its CPU affinity), which can be fewer than the machine has."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return len(os.sched_getaffinity(0))
        except OSError:
            pass
    return os.cpu_count()


def load_average_1m() -> float | None:
    """The 1-minute load average, or None where the OS does not report one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def resident_mib() -> float | None:
    """This process's resident memory in MiB (Linux /proc), or None where it is not available."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def machine_info(device: Any = None, *, with_torch: bool = True) -> dict[str, Any]:
    """A JSON-friendly description of this machine.

    Keys: cpu, logical_cores, usable_cores, load_average_1m (None if unknown), python, system;
    device (when given); torch and torch_threads (when `with_torch` and torch is importable);
    gpu (the CUDA device's name when `device` is a CUDA device).
    """
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average_1m": load_average_1m(),
        "python": platform.python_version(),
        "system": platform.system(),
    }
    if device is not None:
        info["device"] = str(device)
    if not with_torch:
        return info
    try:
        import torch
    except ImportError:
        return info
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_line(device: Any = None, *, with_torch: bool = True) -> str:
    """`machine_info` as one human-readable line, e.g.
    "AMD EPYC 7B13; 2 logical cores (2 usable); load average 0.31; Python 3.11.9 (Linux); torch 2.3.1 (2 threads)".
    """
    info = machine_info(device, with_torch=with_torch)
    load = info["load_average_1m"]
    parts = [
        info["cpu"],
        f"{info['logical_cores']} logical cores ({info['usable_cores']} usable)",
        f"load average {load:.2f}" if load is not None else "load average n/a",
        f"Python {info['python']} ({info['system']})",
    ]
    if "torch" in info:
        parts.append(f"torch {info['torch']} ({info['torch_threads']} threads)")
    if "gpu" in info:
        parts.append(f"GPU {info['gpu']}")
    return "; ".join(parts)


def best_of(fn: Callable[[], object], repeats: int = 3, warmup: int = 0) -> float:
    """The fastest of `repeats` timed calls, in seconds, after `warmup` untimed ones: on a shared
    machine the minimum is the least disturbed measurement."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
