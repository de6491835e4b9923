import json
import os
import subprocess
import sys

import torch

from vimpac.machine import best_of, cpu_name, machine_info, machine_line


def test_machine_info_fields():
    info = machine_info("cpu")
    for key in ("cpu", "logical_cores", "usable_cores", "load_average_1m", "python", "system", "device",
                "torch", "torch_threads"):
        assert key in info, key
    assert info["cpu"] == cpu_name() and info["cpu"]
    assert info["logical_cores"] == os.cpu_count()
    assert 1 <= info["usable_cores"] <= info["logical_cores"]
    assert info["device"] == "cpu"
    assert info["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert "gpu" not in info
    json.dumps(info)  # goes into train_report.json


def test_machine_info_without_torch_or_device():
    info = machine_info(with_torch=False)
    assert "torch" not in info and "torch_threads" not in info and "device" not in info


def test_machine_line_mentions_cpu_and_cores():
    line = machine_line()
    assert "\n" not in line
    assert cpu_name() in line
    assert f"{os.cpu_count()} logical cores" in line
    assert f"torch {torch.__version__} ({torch.get_num_threads()} threads)" in line
    assert "torch" not in machine_line(with_torch=False)


def test_importing_does_not_import_torch():
    code = (
        "import sys\n"
        "from vimpac.machine import cpu_name, machine_line\n"
        "imported = 'torch' in sys.modules\n"
        "line = machine_line(with_torch=False)\n"
        "print(imported, 'torch' in sys.modules, cpu_name() in line)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False", "True"]


def test_best_of_returns_the_fastest_call():
    delays = iter([0.03, 0.001, 0.02])
    import time

    assert best_of(lambda: time.sleep(next(delays)), repeats=3) < 0.015


def test_resident_mib_is_this_process_memory():
    import sys

    from vimpac.machine import resident_mib

    value = resident_mib()
    if not sys.platform.startswith("linux"):
        assert value is None
        return
    ballast = bytearray(64 * 2**20)  # touched below, so resident
    ballast[::4096] = b"x" * len(ballast[::4096])
    assert resident_mib() >= value + 48
