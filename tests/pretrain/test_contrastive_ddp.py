"""InfoNCE with negatives gathered across 2 gloo processes equals the one-process loss over the
global batch: same loss, same feature gradients, same (DDP-averaged) weight gradients."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vimpac.pretrain.contrastive import symmetric_info_nce

WORLD = 2
LOCAL_PAIRS = 3
IN_DIM, OUT_DIM = 7, 5


def _global_problem():
    """The same global batch and linear layer on every process (float64, seeded)."""
    g = torch.Generator().manual_seed(123)
    inputs_first = torch.randn(WORLD * LOCAL_PAIRS, IN_DIM, generator=g, dtype=torch.float64)
    inputs_second = torch.randn(WORLD * LOCAL_PAIRS, IN_DIM, generator=g, dtype=torch.float64)
    weight = torch.randn(OUT_DIM, IN_DIM, generator=g, dtype=torch.float64) * 0.5
    return inputs_first, inputs_second, weight


def _run(inputs_first, inputs_second, weight, normalize, distributed):
    weight = weight.clone().requires_grad_()
    first, second = inputs_first @ weight.T, inputs_second @ weight.T
    first.retain_grad()
    second.retain_grad()
    out = symmetric_info_nce(first, second, temperature=0.2, normalize=normalize, distributed=distributed)
    out.loss.backward()
    return out, first.grad, second.grad, weight.grad


def _worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        inputs_first, inputs_second, weight = _global_problem()
        rows = slice(rank * LOCAL_PAIRS, (rank + 1) * LOCAL_PAIRS)
        results = {}
        for normalize in (True, False):
            out, grad_first, grad_second, grad_weight = _run(
                inputs_first[rows], inputs_second[rows], weight, normalize, distributed=None
            )
            dist.all_reduce(grad_weight)  # what DDP does: average parameter gradients over ranks
            grad_weight /= WORLD
            results[normalize] = {
                "loss": out.loss.detach(),
                "accuracy": out.accuracy,
                "grad_first": grad_first,
                "grad_second": grad_second,
                "grad_weight": grad_weight,
            }
        try:  # unequal local batches are refused on every rank
            size = LOCAL_PAIRS + rank
            symmetric_info_nce(torch.randn(size, 4), torch.randn(size, 4))
            results["unequal"] = "no error"
        except ValueError as exc:
            results["unequal"] = str(exc)
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    # spawn, not fork: forking a pytest process whose torch thread pools are already running
    # hung in `join` after other tests had run (children exited, parent never woke).
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    inputs_first, inputs_second, weight = _global_problem()
    for normalize in (True, False):
        single, grad_first, grad_second, grad_weight = _run(inputs_first, inputs_second, weight, normalize, False)
        per_rank = [r[normalize] for r in ranks]
        # The mean of the ranks' losses (each over its own anchors) is the global loss.
        mean_loss = sum(r["loss"] for r in per_rank) / WORLD
        torch.testing.assert_close(mean_loss, single.loss.detach(), rtol=1e-12, atol=0)
        mean_accuracy = sum(r["accuracy"] for r in per_rank) / WORLD
        assert mean_accuracy.item() == pytest.approx(single.accuracy.item())
        for rank, result in enumerate(per_rank):
            rows = slice(rank * LOCAL_PAIRS, (rank + 1) * LOCAL_PAIRS)
            # Each rank's features receive the gradient of the SUM of the ranks' losses, i.e.
            # WORLD x the gradient of the global mean; DDP's averaging divides it back.
            torch.testing.assert_close(result["grad_first"], WORLD * grad_first[rows], rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(result["grad_second"], WORLD * grad_second[rows], rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(result["grad_weight"], grad_weight, rtol=1e-10, atol=1e-13)
    for result in ranks:
        assert "same number of rows" in result["unequal"]
