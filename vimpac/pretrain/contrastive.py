"""The pre-training objective: symmetric InfoNCE between the two clips of each video, the
masked-token loss, and their combination L = L_mask + alpha * gamma * L_cl (paper Eq. 6).

InfoNCE (paper Eqs. 4/19 and 20). A batch holds n videos with clip features f_i (first clips)
and f'_i (second clips). For the first clip of video i,

    L(i)  = -log  exp(f_i.f'_i / g) / ( sum_{k != i} exp(f_i.f_k / g) + sum_k exp(f_i.f'_k / g) )

so its candidates are every second clip (the positive f'_i included) and every OTHER first
clip; f_i.f_i is not a candidate. L'(i) is the mirror image (every first clip, every other
second clip). L_cl = mean_i L(i) + mean_i L'(i).

Features: the paper writes raw dot products of the CLS-head outputs, but the authors' code
(`DistributedNCELoss(hidden_norm=True)`) L2-normalises the features first; we follow the code
by default (`normalize=True`) and keep the paper's raw dot product as `normalize=False`.

Data parallel: the negatives are the whole global batch. Each rank gathers every rank's
features with `gather_with_grad` and computes the loss of its own anchors against the global
candidates. The gather's backward sums, over ranks, the gradients that every rank's loss sends
to this rank's features, so after DDP averages the parameter gradients over ranks they equal
the gradient of the single-process loss over the global batch (and the mean of the ranks'
losses equals that loss). Ranks must hold the same number of videos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vimpac.config import ConfigError
from vimpac.engine.distributed import gather_with_grad
from vimpac.pretrain.errors import PretrainError
from vimpac.pretrain.masking import IGNORE_INDEX


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which losses pre-training optimises and how they are weighted.

    masked_token: include L_mask. False with data.contrastive_unmasked=true is the paper's
                  contrastive-only row (Table 7, Table 16's "alpha = inf*"); False alone is
                  Table 12's contrastive learning on masked inputs.
    alpha:        weight of the contrastive loss; 0 switches it off (Table 16's alpha = 0).
    temperature:  gamma of InfoNCE; the total loss multiplies L_cl by it, as the original does.
    normalize:    L2-normalise the features before the dot products (the authors' code).
    """

    masked_token: bool = True
    alpha: float = 1.0
    temperature: float = 0.2
    normalize: bool = True

    def __post_init__(self) -> None:
        # An infinite weight or temperature makes every loss inf or nan, and every update is then
        # skipped as non-finite. The paper's "alpha = inf*" row is masked_token=false on unmasked inputs.
        if not (math.isfinite(self.alpha) and self.alpha >= 0.0):
            raise ConfigError(f"objective.alpha: expected a finite weight >= 0, got {self.alpha!r} "
                              "(for contrastive learning alone, the paper's 'alpha = inf*', set "
                              "objective.masked_token=false data.contrastive_unmasked=true)")
        if not (math.isfinite(self.temperature) and self.temperature > 0.0):
            raise ConfigError(f"objective.temperature: expected a finite value > 0, got {self.temperature!r}")
        if not self.masked_token and self.alpha == 0.0:
            raise ConfigError("objective: masked_token=false and alpha=0 leave no loss to optimise")

    @property
    def contrastive(self) -> bool:
        return self.alpha > 0.0


class InfoNCEResult(NamedTuple):
    loss: torch.Tensor  # L_cl = mean_i L(i) + mean_i L'(i), over this rank's anchors
    loss_first: torch.Tensor  # mean_i L(i)
    loss_second: torch.Tensor  # mean_i L'(i)
    accuracy: torch.Tensor  # share of the 2n anchors whose positive beats every negative (no grad)


def symmetric_info_nce(
    first: torch.Tensor,
    second: torch.Tensor,
    temperature: float = 0.2,
    normalize: bool = True,
    distributed: bool | None = None,
    group: dist.ProcessGroup | None = None,
) -> InfoNCEResult:
    """Symmetric InfoNCE of paired clip features `first[i]` <-> `second[i]`, both (n, d).

    `distributed=None` gathers the negatives from every rank when a process group with more
    than one rank is initialised; True / False force it. The logits are computed in float32
    (or float64 for float64 input) even under autocast: a bf16 dot product divided by 0.2 is
    too coarse for a softmax over hundreds of candidates.
    """
    if first.dim() != 2 or first.shape != second.shape:
        raise PretrainError(
            f"symmetric_info_nce: expected two (n, d) feature tensors of the same shape, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}"
        )
    if first.shape[0] == 0:
        raise PretrainError("symmetric_info_nce: the batch has no clip pairs")
    if not temperature > 0.0:
        raise PretrainError(f"symmetric_info_nce: temperature must be > 0, got {temperature!r}")
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1

    dtype = torch.promote_types(first.dtype, torch.float32)
    with torch.autocast(device_type=first.device.type, enabled=False):
        first, second = first.to(dtype), second.to(dtype)
        if normalize:
            first, second = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
        if distributed:
            all_first, all_second = gather_with_grad(first, group), gather_with_grad(second, group)
            offset = dist.get_rank(group) * first.shape[0]
        else:
            all_first, all_second, offset = first, second, 0
        loss_first, correct_first = _one_side(first, all_second, all_first, offset, temperature)
        loss_second, correct_second = _one_side(second, all_first, all_second, offset, temperature)
    accuracy = torch.cat([correct_first, correct_second]).float().mean()
    return InfoNCEResult(loss_first + loss_second, loss_first, loss_second, accuracy)


def _one_side(
    anchors: torch.Tensor,
    other_side: torch.Tensor,
    same_side: torch.Tensor,
    offset: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss of `anchors` (n, d): candidates are all of `other_side` (N, d), positive at
    offset + i, and all of `same_side` (N, d) but the anchor itself.

    The two candidate sets are reduced with separate log-sum-exps and combined, instead of
    concatenating an (n, 2N) logit matrix; the temperature scales the (n, d) anchors rather
    than the (n, N) logits.
    """
    n = anchors.shape[0]
    rows = torch.arange(n, device=anchors.device)
    targets = rows + offset
    scaled = anchors / temperature
    logits_other = scaled @ other_side.T
    logits_same = scaled @ same_side.T
    logits_same = logits_same.index_put((rows, targets), logits_same.new_tensor(float("-inf")))
    positive = logits_other[rows, targets]
    log_denominator = torch.logaddexp(logits_other.logsumexp(dim=1), logits_same.logsumexp(dim=1))
    loss = (log_denominator - positive).mean()
    with torch.no_grad():
        negatives_other = logits_other.index_put((rows, targets), logits_other.new_tensor(float("-inf")))
        best_negative = torch.maximum(negatives_other.amax(dim=1), logits_same.amax(dim=1))
        correct = positive > best_negative
    return loss, correct


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy over the labelled positions: (loss, accuracy).

    `logits` (..., V) and `labels` (...) with -100 at unlabelled positions. Only labelled rows
    go through the softmax. With no labelled position the loss is a graph-connected zero.
    A prediction is right when the label's logit is the row's maximum (a tie at the top counts
    as right; `amax` is ~12x faster than `argmax` on CPU at (1000, 8197)).
    """
    if logits.shape[:-1] != labels.shape:
        raise PretrainError(
            f"masked_token_loss: logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)} "
            "(expected logits shaped labels + (vocabulary,))"
        )
    labelled = labels != IGNORE_INDEX
    if not bool(labelled.all()):
        # The trainer passes only masked positions, all labelled: no copy of the logits then.
        logits, labels = logits[labelled], labels[labelled]
    if labels.numel() == 0:
        return logits.sum() * 0.0, logits.new_zeros(())
    logits = logits.reshape(-1, logits.shape[-1]).float()   # the softmax runs in fp32 under autocast too
    labels = labels.reshape(-1)
    loss = F.cross_entropy(logits, labels)
    with torch.no_grad():
        label_logit = logits.gather(1, labels[:, None]).squeeze(1)
        accuracy = (label_logit >= logits.amax(-1)).float().mean()
    return loss, accuracy


def pretraining_loss(
    mask_loss: torch.Tensor | None,
    contrastive_loss: torch.Tensor | None,
    config: ObjectiveConfig,
) -> torch.Tensor:
    """L = L_mask + alpha * gamma * L_cl (paper Eq. 6), honouring the config's switches.

    A loss the config switches off may be None; a loss it needs may not.
    """
    total = None
    if config.masked_token:
        if mask_loss is None:
            raise PretrainError("pretraining_loss: objective.masked_token is on but no masked-token loss was given")
        total = mask_loss
    if config.contrastive:
        if contrastive_loss is None:
            raise PretrainError("pretraining_loss: objective.alpha > 0 but no contrastive loss was given")
        weighted = config.alpha * config.temperature * contrastive_loss
        total = weighted if total is None else total + weighted
    assert total is not None  # ObjectiveConfig rejects the all-off setting
    return total
