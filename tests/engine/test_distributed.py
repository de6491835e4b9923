"""Joining the process group torchrun describes: backend and how long collectives wait."""

from __future__ import annotations

import datetime

import torch

from vimpac.engine.distributed import DistInfo, init_distributed


def test_collectives_wait_30_minutes_on_nccl_as_on_gloo(monkeypatch):
    # torch's NCCL default is 10 minutes, shorter than rank 0 may take to write a large checkpoint
    # to a shared file system while the other ranks wait at the barrier after it.
    joined = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: joined.append((backend, kw)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    assert init_distributed("cuda") == DistInfo(1, 2, 1)
    init_distributed("cpu")
    init_distributed("cpu", timeout=datetime.timedelta(days=7))  # as `vimpac tokenize` asks
    half_hour = {"timeout": datetime.timedelta(minutes=30)}
    assert joined == [("nccl", half_hour), ("gloo", half_hour), ("gloo", {"timeout": datetime.timedelta(days=7)})]
