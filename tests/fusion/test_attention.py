from __future__ import annotations

import math

import pytest
import torch

from fusion.attention import AttentionFusion


def make(dim: int = 16, num_heads: int = 4, dropout: float = 0.0, seed: int = 0) -> AttentionFusion:
    torch.manual_seed(seed)
    return AttentionFusion(dim, num_heads=num_heads, dropout=dropout).double().eval()


def random_batch(n: int = 6, m: int = 3, dim: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, m, dim, generator=g, dtype=torch.float64)
    mask = torch.ones(n, m, dtype=torch.bool)
    mask[1, 0] = mask[2, 2] = mask[3, 1] = mask[3, 2] = False  # row 3 keeps token 0 only
    return tokens, mask


def test_repr():
    assert repr(AttentionFusion(64, num_heads=4)) == "AttentionFusion(64, num_heads=4)"
    assert repr(AttentionFusion(64)) == "AttentionFusion(64, num_heads=4)"
    with_dropout = AttentionFusion(32, num_heads=2, dropout=0.1)
    assert repr(with_dropout) == "AttentionFusion(32, num_heads=2, dropout=0.1)"


def test_hand_computed_single_head():
    fusion = AttentionFusion(2, num_heads=1).double()
    eye = torch.eye(2, dtype=torch.float64)
    with torch.no_grad():
        fusion.query.copy_(torch.tensor([1.0, 0.0]))
        fusion.q_proj.weight.zero_()  # query = the learned vector alone
        for lin in (fusion.k_proj, fusion.v_proj, fusion.out_proj):
            lin.weight.copy_(eye)
        for lin in (fusion.q_proj, fusion.k_proj, fusion.v_proj, fusion.out_proj):
            lin.bias.zero_()
    # scores <q, t> / sqrt(2): 0 for t1, ln 3 for t2 -> softmax (1/4, 3/4); t3 masked
    t1 = [0.0, 5.0]
    t2 = [math.sqrt(2) * math.log(3), 7.0]
    t3 = [100.0, 100.0]
    tokens = torch.tensor([[t1, t2, t3]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    fused, weights = fusion(tokens, mask)
    torch.testing.assert_close(weights, torch.tensor([[0.25, 0.75, 0.0]], dtype=torch.float64))
    t = tokens[0]  # [3, 2]
    torch.testing.assert_close(fused, (0.25 * t[0] + 0.75 * t[1]).unsqueeze(0))


def test_masked_tokens_get_exactly_zero_and_rows_sum_to_one():
    fusion = make()
    tokens, mask = random_batch()
    fused, weights = fusion(tokens, mask)
    assert fused.shape == (6, 16) and weights.shape == (6, 3)
    assert (weights[~mask] == 0).all()
    assert (weights[mask] > 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(6, dtype=torch.float64))


def test_masked_token_values_are_ignored_even_nan():
    fusion = make()
    tokens, mask = random_batch()
    fused, weights = fusion(tokens, mask)
    garbage = tokens.clone()
    garbage[~mask] = float("nan")
    fused2, weights2 = fusion(garbage, mask)
    torch.testing.assert_close(fused2, fused, rtol=0, atol=0)
    torch.testing.assert_close(weights2, weights, rtol=0, atol=0)


def test_permuting_tokens_permutes_weights_and_keeps_fused():
    fusion = make()
    tokens, mask = random_batch()
    fused, weights = fusion(tokens, mask)
    perm = torch.tensor([2, 0, 1])
    fused_p, weights_p = fusion(tokens[:, perm], mask[:, perm])
    torch.testing.assert_close(weights_p, weights[:, perm], rtol=0, atol=1e-12)
    torch.testing.assert_close(fused_p, fused, rtol=0, atol=1e-12)


def test_single_present_token_returns_its_value_path():
    fusion = make()
    tokens, mask = random_batch()
    fused, weights = fusion(tokens, mask)
    assert weights[3].tolist() == [1.0, 0.0, 0.0]
    value_path = fusion.out_proj(fusion.v_proj(tokens[3, 0]))
    torch.testing.assert_close(fused[3], value_path, rtol=0, atol=1e-12)


def test_batch_equals_one_at_a_time():
    fusion = make()
    tokens, mask = random_batch()
    fused, weights = fusion(tokens, mask)
    for i in range(tokens.size(0)):
        f1, w1 = fusion(tokens[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(f1[0], fused[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(w1[0], weights[i], rtol=0, atol=1e-12)


def test_row_without_present_token_raises_naming_rows():
    fusion = make()
    tokens, mask = random_batch()
    mask[4] = False
    mask[5] = False
    with pytest.raises(ValueError, match=r"2 row\(s\) have no present token.*first rows \[4, 5\]"):
        fusion(tokens, mask)


def test_bad_shapes_raise():
    fusion = make()
    tokens, mask = random_batch()
    with pytest.raises(ValueError, match=r"tokens of shape \[N, M, 16\]"):
        fusion(tokens[..., :8], mask)
    with pytest.raises(ValueError, match="bool mask of shape"):
        fusion(tokens, mask.long())
    with pytest.raises(ValueError, match="bool mask of shape"):
        fusion(tokens, mask[:, :2])
    with pytest.raises(ValueError, match="divisible by num_heads"):
        AttentionFusion(10, num_heads=4)
    with pytest.raises(ValueError, match="dropout must be in"):
        AttentionFusion(8, num_heads=2, dropout=1.0)


def test_reset_parameters_is_deterministic_under_seed():
    fusion = AttentionFusion(16, num_heads=4)
    torch.manual_seed(3)
    fusion.reset_parameters()
    first = {k: v.clone() for k, v in fusion.state_dict().items()}
    torch.manual_seed(4)
    fusion.reset_parameters()
    assert any(not torch.equal(first[k], v) for k, v in fusion.state_dict().items())
    torch.manual_seed(3)
    fusion.reset_parameters()
    for k, v in fusion.state_dict().items():
        assert torch.equal(first[k], v), k


def test_dropout_only_in_training_mode():
    tokens, mask = random_batch()
    drop = make(dropout=0.5)
    plain = make(dropout=0.0)
    plain.load_state_dict(drop.state_dict())
    f_eval, w_eval = drop(tokens, mask)
    f_eval2, _ = drop(tokens, mask)
    f_plain, w_plain = plain(tokens, mask)
    assert torch.equal(f_eval, f_eval2)
    torch.testing.assert_close(f_eval, f_plain, rtol=0, atol=0)

    drop.train()
    torch.manual_seed(0)
    f_train, w_train = drop(tokens, mask)
    assert not torch.allclose(f_train, f_eval)
    # returned weights are the pre-dropout ones, so explanations do not flicker
    torch.testing.assert_close(w_train, w_eval, rtol=0, atol=0)


def test_gradient_reaches_every_parameter_and_present_tokens_only():
    fusion = make()
    tokens, mask = random_batch()
    tokens.requires_grad_()
    fused, _ = fusion(tokens, mask)
    fused.pow(2).sum().backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert (tokens.grad[~mask] == 0).all()
    assert (tokens.grad[mask].abs().sum(-1) > 0).all()
