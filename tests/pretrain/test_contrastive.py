"""Symmetric InfoNCE against a loop-by-loop transcription of the paper's Eqs. (4), (5), (19),
(20), plus the masked-token loss and the total objective (Eq. 6)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vimpac.config import ConfigError, build_config
from vimpac.pretrain.contrastive import (
    ObjectiveConfig,
    masked_token_loss,
    pretraining_loss,
    symmetric_info_nce,
)
from vimpac.pretrain.errors import PretrainError


def reference_info_nce(f: torch.Tensor, f2: torch.Tensor, gamma: float, normalize: bool):
    """The paper's equations written out with loops over i and k (float64)."""
    if normalize:
        f = f / f.norm(dim=1, keepdim=True)
        f2 = f2 / f2.norm(dim=1, keepdim=True)
    n = f.shape[0]

    def dot(a, b):
        return torch.exp(torch.dot(a, b) / gamma)

    losses, losses_prime, correct = [], [], 0
    for i in range(n):
        # Eq. (4)/(19): negatives f_i.f_k (k != i) and f_i.f'_k for ALL k (positive included).
        denominator = sum(dot(f[i], f[k]) for k in range(n) if k != i) + sum(dot(f[i], f2[k]) for k in range(n))
        losses.append(-torch.log(dot(f[i], f2[i]) / denominator))
        # Eq. (20): f'_i.f_k for ALL k and f'_i.f'_k (k != i).
        denominator = sum(dot(f2[i], f[k]) for k in range(n)) + sum(dot(f2[i], f2[k]) for k in range(n) if k != i)
        losses_prime.append(-torch.log(dot(f2[i], f[i]) / denominator))
        # Accuracy: the positive scores above every other candidate.
        positive = torch.dot(f[i], f2[i])
        others = [torch.dot(f[i], f[k]) for k in range(n) if k != i] + [torch.dot(f[i], f2[k]) for k in range(n) if k != i]
        correct += int(all(positive > o for o in others))
        positive = torch.dot(f2[i], f[i])
        others = [torch.dot(f2[i], f[k]) for k in range(n) if k != i] + [torch.dot(f2[i], f2[k]) for k in range(n) if k != i]
        correct += int(all(positive > o for o in others))
    # Eq. (5): L_cl = mean_i L(i) + mean_i L'(i)
    loss = sum(losses) / n + sum(losses_prime) / n
    return loss, correct / (2 * n)


def _features(n=6, d=5, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    first = (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).requires_grad_()
    second = (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).requires_grad_()
    return first, second


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("gamma", [0.2, 1.0])
def test_info_nce_values_and_gradients_match_the_equations(normalize, gamma):
    first, second = _features(scale=0.7)
    ours = symmetric_info_nce(first, second, temperature=gamma, normalize=normalize, distributed=False)
    ref_loss, ref_accuracy = reference_info_nce(first, second, gamma, normalize)
    assert ours.loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    assert ours.loss_first.item() + ours.loss_second.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    assert ours.accuracy.item() == pytest.approx(ref_accuracy)
    grads = torch.autograd.grad(ours.loss, (first, second))
    ref_grads = torch.autograd.grad(ref_loss, (first, second))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_info_nce_gradcheck():
    first, second = _features(n=4, d=3, seed=1)
    for normalize in (True, False):
        assert torch.autograd.gradcheck(
            lambda a, b: symmetric_info_nce(a, b, 0.2, normalize, distributed=False).loss, (first, second)
        )


def test_info_nce_known_cases():
    # One video: the only candidate of each side is its positive, so the loss is 0.
    first, second = _features(n=1)
    out = symmetric_info_nce(first, second, distributed=False)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12) and out.accuracy.item() == 1.0
    # Identical, well separated pairs: accuracy 1 and a small loss.
    basis = torch.eye(4, dtype=torch.float64)
    out = symmetric_info_nce(basis, basis.clone(), temperature=0.05, distributed=False)
    assert out.accuracy.item() == 1.0 and out.loss.item() < 1e-6
    # All features equal: each side has 2n - 1 equal candidates -> 2 log(2n - 1).
    same = torch.ones(5, 3, dtype=torch.float64)
    out = symmetric_info_nce(same, same, distributed=False)
    assert out.loss.item() == pytest.approx(2 * math.log(9))


def test_info_nce_runs_in_float32_under_bf16_autocast():
    first, second = _features(n=8, d=16, seed=2)
    exact = symmetric_info_nce(first, second, distributed=False).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = symmetric_info_nce(first.float(), second.float(), distributed=False)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(exact, rel=1e-5)


def test_info_nce_rejects_bad_shapes():
    with pytest.raises(PretrainError, match="same shape"):
        symmetric_info_nce(torch.zeros(3, 4), torch.zeros(2, 4), distributed=False)
    with pytest.raises(PretrainError, match="no clip pairs"):
        symmetric_info_nce(torch.zeros(0, 4), torch.zeros(0, 4), distributed=False)


def test_masked_token_loss_only_counts_labelled_positions():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, 11, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (2, 3, 4, 4), generator=g)
    labels[:, 1:] = -100
    loss, accuracy = masked_token_loss(logits, labels)
    keep = labels != -100
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert accuracy.item() == pytest.approx((logits[keep].argmax(-1) == labels[keep]).float().mean().item())
    loss.backward()
    assert logits.grad[:, 1:].abs().sum() == 0
    none_loss, _ = masked_token_loss(logits, torch.full_like(labels, -100))
    assert none_loss.item() == 0.0 and none_loss.requires_grad
    with pytest.raises(PretrainError, match="do not match labels"):
        masked_token_loss(logits, labels[..., :2])


def test_masked_token_loss_all_labelled_rows_and_bf16():
    """The trainer's call: (N, V) logits of masked positions only, every row labelled, under bf16."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(300, 50, generator=g)
    labels = torch.randint(0, 50, (300,), generator=g)
    labels[:60] = logits[:60].argmax(-1)                       # some right answers
    loss, accuracy = masked_token_loss(logits, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert accuracy.item() == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    bf16 = logits.bfloat16().requires_grad_()
    loss16, _ = masked_token_loss(bf16, labels)
    assert loss16.dtype == torch.float32                       # softmax in fp32
    assert loss16.item() == pytest.approx(F.cross_entropy(bf16.float(), labels).item(), rel=1e-6)
    loss16.backward()
    assert bf16.grad.dtype == torch.bfloat16


def test_masked_token_loss_accuracy_counts_ties_as_right():
    logits = torch.tensor([[1.0, 3.0, 3.0], [5.0, 0.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([2, 1, 2, 0])                      # tie at the top, wrong, right, three-way tie
    _, accuracy = masked_token_loss(logits, labels)
    assert accuracy.item() == pytest.approx(3 / 4)
    assert not accuracy.requires_grad


def test_total_loss_switches():
    mask_loss, cl = torch.tensor(2.0), torch.tensor(3.0)
    assert pretraining_loss(mask_loss, cl, ObjectiveConfig()).item() == pytest.approx(2.0 + 1.0 * 0.2 * 3.0)
    assert pretraining_loss(mask_loss, cl, ObjectiveConfig(alpha=0.5)).item() == pytest.approx(2.0 + 0.5 * 0.2 * 3.0)
    assert pretraining_loss(mask_loss, None, ObjectiveConfig(alpha=0.0)).item() == 2.0
    assert pretraining_loss(None, cl, ObjectiveConfig(masked_token=False)).item() == pytest.approx(0.6)
    with pytest.raises(PretrainError, match="no contrastive loss"):
        pretraining_loss(mask_loss, None, ObjectiveConfig())
    with pytest.raises(PretrainError, match="no masked-token loss"):
        pretraining_loss(None, cl, ObjectiveConfig())
    with pytest.raises(ConfigError, match="no loss"):
        ObjectiveConfig(masked_token=False, alpha=0.0)
    with pytest.raises(ConfigError, match="temperature"):
        build_config(ObjectiveConfig, overrides=["temperature=0"])


@pytest.mark.parametrize("override, message", [
    ("alpha=inf", "objective.alpha: expected a finite weight >= 0, got inf .*objective.masked_token=false"),
    ("temperature=inf", "objective.temperature: expected a finite value > 0, got inf"),
])
def test_objective_refuses_infinite_weights(override, message):
    # They made every loss inf / nan: each update was skipped and the run "finished" untrained.
    with pytest.raises(ConfigError, match=message):
        build_config(ObjectiveConfig, overrides=[override])
