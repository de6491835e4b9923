"""torch.distributed set-up from torchrun's environment; a single process needs nothing.

`torchrun --nproc_per_node N -m vimpac.cli pretrain ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
without them everything runs as rank 0 of 1 and no process group is created.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# How long a collective waits for the other ranks by default, on gloo and NCCL alike. torch's NCCL
# default, 10 minutes, is shorter than what one rank of a large GPU run may spend outside the
# collectives: rank 0 writing a checkpoint (2.5 GB for Large-Half with AdamW, fsync'd to the shared
# file system) while the others wait at the barrier after it, or the ranks of a resumed job all
# reading that checkpoint from it at once before DDP's first broadcast. 30 minutes is gloo's default.
RANK_WAIT_DEFAULT = datetime.timedelta(minutes=30)


def init_distributed(device: str = "cpu", timeout: datetime.timedelta | None = None) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); idempotent.
    `timeout`: how long a collective (a barrier) may wait for the other ranks; None:
    `RANK_WAIT_DEFAULT` (30 minutes)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=timeout if timeout is not None else RANK_WAIT_DEFAULT)
    return info


def rank_device(device: str | torch.device, info: DistInfo) -> torch.device:
    """The device this process trains on: a plain "cuda" means this rank's GPU under torchrun."""
    if str(device).startswith("cuda") and info.enabled:
        return torch.device(f"cuda:{info.local_rank}")
    return torch.device(device)


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group cleanly: wait for every rank, then destroy it.

    Without the barrier a fast rank can tear its connections down while a peer still talks to it;
    without the destroy, gloo's threads outlive the interpreter and can abort the process at exit
    ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Average scalar metrics over ranks (one collective for the whole dict)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))


def all_gather_int(value: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's `value`, in rank order (`[value]` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
    parts = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return [int(part) for part in parts]


def gather_strided_rows(rows: torch.Tensor, total: int) -> torch.Tensor:
    """The (total, ...) tensor whose rows r, r + W, r + 2W, ... are rank r's `rows`, on every rank
    (for work dealt out as `items[rank::world_size]`; ranks may hold one row fewer than others).
    Without a process group, `rows` itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return rows
    world_size = dist.get_world_size()
    per_rank = -(-total // world_size)
    padded = torch.zeros((per_rank, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[:rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    out = torch.empty((total, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    for rank, part in enumerate(parts):
        out[rank::world_size] = part[:len(range(rank, total, world_size))]
    return out


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when `flag` is true on at least one (stops and skips stay in step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the gradient summed over ranks.

    Implemented with all_reduce + slicing rather than reduce_scatter so that it runs on gloo
    (CPU) as well as NCCL.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        world_size = dist.get_world_size(group)
        tensor = tensor.contiguous()
        sizes = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(world_size)]
        dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device), group=group)
        if len({int(size) for size in sizes}) != 1:
            raise ValueError(f"gather_with_grad: every rank must hold the same number of rows, got "
                               f"{[int(s) for s in sizes]}")
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor, group=group)
        ctx.group = group
        ctx.rows = tensor.shape[0]
        ctx.rank = dist.get_rank(group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        begin = ctx.rank * ctx.rows
        return grad[begin: begin + ctx.rows], None


def gather_with_grad(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate every rank's `tensor` (rank order) along dim 0, with gradients flowing back:
    each rank receives the gradient of its rows summed over all ranks' losses."""
    return _GatherWithGrad.apply(tensor, group)
