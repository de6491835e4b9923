"""Batch statistics over the global batch of all processes, on CPU as well as GPU.

torch's SyncBatchNorm only runs on GPUs; on a CPU (gloo) process group `GatheredBatchNorm1d`
gathers the (small) feature matrix from every rank with gradients, normalises the global batch
and keeps this rank's rows. The contrastive head needs this: its BatchNorm sees the whole
global batch, as in a single process, so DDP gives the same gradients as one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from vimpac.engine.distributed import gather_with_grad


class GatheredBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics come from every rank's rows (same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        rows = x.shape[0]
        full = gather_with_grad(x)
        begin = dist.get_rank() * rows
        return super().forward(full)[begin:begin + rows]


def synchronize_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm1d use global-batch statistics: torch's SyncBatchNorm on GPUs,
    GatheredBatchNorm1d elsewhere. A no-op without a process group of several ranks."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) in (nn.BatchNorm1d, nn.SyncBatchNorm):
            gathered = GatheredBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                           child.track_running_stats)
            reference = next(iter(child.state_dict().values()))
            gathered.to(device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)
            gathered.load_state_dict(child.state_dict())
            setattr(model, name, gathered)
        else:
            synchronize_batchnorm(child, device)
    return model
