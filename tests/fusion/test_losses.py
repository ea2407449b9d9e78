from __future__ import annotations

import math

import pytest
import torch

from fusion.losses import alignment_loss, bpr_loss, l2_regularization, norm_regularization, sampled_softmax_loss


def test_bpr_one_negative_per_positive():
    pos = torch.tensor([1.0, 2.0])
    neg = torch.tensor([0.0, 3.0])
    # softplus(-1) = log(1 + e^-1), softplus(1) = log(1 + e)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_several_negatives_averages_over_pairs():
    pos = torch.tensor([0.0, 1.0], dtype=torch.float64)
    neg = torch.tensor([[0.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    expected = (math.log(2) + math.log(1 + math.e) + math.log(2) + math.log(1 + math.exp(2))) / 4
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-12)


def test_bpr_gradient_pushes_positive_up_and_negative_down():
    pos = torch.tensor([0.5], requires_grad=True)
    neg = torch.tensor([0.5], requires_grad=True)
    bpr_loss(pos, neg).backward()
    # d/dpos softplus(neg - pos) = -sigmoid(0) = -1/2
    assert pos.grad.item() == pytest.approx(-0.5)
    assert neg.grad.item() == pytest.approx(0.5)


def test_sampled_softmax_hand_values():
    pos = torch.tensor([1.0, 0.0], dtype=torch.float64)
    neg = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    # -pos + log(sum exp [pos, negs])
    row0 = -1 + math.log(math.e + 2)
    row1 = -0 + math.log(1 + math.exp(2) + 1)
    assert sampled_softmax_loss(pos, neg).item() == pytest.approx((row0 + row1) / 2, rel=1e-12)
    # temperature 0.5 doubles every logit
    row0_t = -2 + math.log(math.exp(2) + 2)
    row1_t = -0 + math.log(1 + math.exp(4) + 1)
    assert sampled_softmax_loss(pos, neg, temperature=0.5).item() == pytest.approx(
        (row0_t + row1_t) / 2, rel=1e-12
    )


def test_l2_regularization_is_half_squared_norm_over_batch():
    a = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    b = torch.tensor([3.0, 0.0, 0.0])
    # (1 + 4 + 0 + 1 + 9) / 2 / 5
    assert l2_regularization(a, b, batch_size=5).item() == pytest.approx(1.5)


def test_norm_regularization_is_sum_of_frobenius_norms_over_batch():
    a = torch.tensor([[3.0, 0.0], [0.0, -4.0]])  # ||a|| = 5
    b = torch.tensor([0.0, 12.0, 5.0])  # ||b|| = 13
    assert norm_regularization(a, b, batch_size=9).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        norm_regularization(a, batch_size=0)
    with pytest.raises(ValueError, match="at least one tensor"):
        norm_regularization(batch_size=2)


def test_alignment_loss_is_one_minus_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    b = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    # cosines 1, 0, -1 -> losses 0, 1, 2
    assert alignment_loss(a, b).item() == pytest.approx(1.0)
    assert alignment_loss(a, a).item() == pytest.approx(0.0, abs=1e-7)
    # a zero row has cosine 0, not NaN
    assert alignment_loss(torch.zeros(1, 2), torch.ones(1, 2)).item() == pytest.approx(1.0)


def test_alignment_gradient_only_into_undetached_side():
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)
    alignment_loss(a, b.detach()).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert b.grad is None


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"neg_scores must be \[B\] or \[B, S\] with B=2"):
        bpr_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"pos_scores must be 1-d"):
        bpr_loss(torch.zeros(2, 1), torch.zeros(2))
    with pytest.raises(ValueError, match=r"neg_scores must be \[B, S\]"):
        sampled_softmax_loss(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sampled_softmax_loss(torch.zeros(2), torch.zeros(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        l2_regularization(torch.zeros(2), batch_size=0)
    with pytest.raises(ValueError, match="at least one tensor"):
        l2_regularization(batch_size=2)
    with pytest.raises(ValueError, match=r"two \[N, D\] tensors of one shape"):
        alignment_loss(torch.zeros(2, 3), torch.zeros(2, 4))
