from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusion.projection import ModalityProjection


def test_repr():
    assert repr(ModalityProjection(384, 64)) == "ModalityProjection(384, 64)"
    assert (
        repr(ModalityProjection(1280, 64, hidden=256, dropout=0.1))
        == "ModalityProjection(1280, 64, hidden=256, dropout=0.1)"
    )
    assert repr(ModalityProjection(1, 8, norm=False)) == "ModalityProjection(1, 8, norm=False)"


def test_hand_computed_layernorm_then_linear():
    proj = ModalityProjection(2, 3).double()
    with torch.no_grad():
        proj.lin1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]]))
        proj.lin1.bias.copy_(torch.tensor([0.5, 0.0, -1.0]))
    # [1, 3] and [10, 6]: mean 2 / 8, variance 1 / 4 -> LayerNorm gives [-1, 1] and [1, -1]
    # (up to LayerNorm's eps = 1e-5 in the variance)
    x = torch.tensor([[1.0, 3.0], [10.0, 6.0]], dtype=torch.float64)
    s1, s2 = (1 / (1 + 1e-5)) ** 0.5, (4 / (4 + 1e-5)) ** 0.5
    expected = torch.tensor(
        [[-s1 + 0.5, s1, -2 * s1 + 3 * s1 - 1], [s2 + 0.5, -s2, 2 * s2 - 3 * s2 - 1]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(proj(x), expected, rtol=0, atol=1e-12)


def test_norm_false_is_plain_linear_and_hidden_is_two_layer_mlp():
    torch.manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64)
    lin = ModalityProjection(7, 4, norm=False).double()
    torch.testing.assert_close(lin(x), x @ lin.lin1.weight.T + lin.lin1.bias)

    mlp = ModalityProjection(7, 4, hidden=6).double().eval()
    h = F.gelu(mlp.lin1(F.layer_norm(x, (7,), mlp.norm.weight, mlp.norm.bias)))
    torch.testing.assert_close(mlp(x), mlp.lin2(h))
    assert mlp(x).shape == (5, 4)


def test_scale_of_input_does_not_matter_with_norm():
    # the reason for the input LayerNorm: unit-norm text and large image features land alike
    torch.manual_seed(0)
    proj = ModalityProjection(16, 8).double()
    x = torch.randn(4, 16, dtype=torch.float64)
    # equal up to LayerNorm's eps (1e-5 added to a variance of ~1)
    torch.testing.assert_close(proj(x * 1000.0), proj(x), rtol=0, atol=1e-4)


def test_batch_equals_one_at_a_time():
    torch.manual_seed(0)
    proj = ModalityProjection(12, 8, hidden=10).double().eval()
    x = torch.randn(6, 12, dtype=torch.float64)
    full = proj(x)
    for i in range(6):
        torch.testing.assert_close(proj(x[i : i + 1])[0], full[i], rtol=0, atol=1e-12)


def test_reset_parameters_is_deterministic_under_seed():
    proj = ModalityProjection(12, 8, hidden=10)
    torch.manual_seed(5)
    proj.reset_parameters()
    first = {k: v.clone() for k, v in proj.state_dict().items()}
    torch.manual_seed(6)
    proj.reset_parameters()
    assert not torch.equal(first["lin1.weight"], proj.lin1.weight)
    torch.manual_seed(5)
    proj.reset_parameters()
    for k, v in proj.state_dict().items():
        assert torch.equal(first[k], v), k


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    proj = ModalityProjection(32, 8, hidden=16, dropout=0.5).eval()
    x = torch.randn(4, 32)
    assert torch.equal(proj(x), proj(x))
    plain = ModalityProjection(32, 8, hidden=16).eval()
    plain.load_state_dict(proj.state_dict())
    assert torch.equal(proj(x), plain(x))
    proj.train()
    assert not torch.allclose(proj(x), plain(x))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    proj = ModalityProjection(6, 4, hidden=5)
    proj(torch.randn(3, 6)).pow(2).sum().backward()
    for name, p in proj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="widths must be positive"):
        ModalityProjection(0, 8)
    with pytest.raises(ValueError, match="dropout must be in"):
        ModalityProjection(8, 8, dropout=1.5)
    with pytest.raises(ValueError, match="in_dim=1.*norm=False"):
        ModalityProjection(1, 8)
    with pytest.raises(ValueError, match=r"expects features of shape \[N, 384\], got \[2, 383\]"):
        ModalityProjection(384, 64)(torch.zeros(2, 383))


def test_init_gain_scales_only_the_output_layer():
    torch.manual_seed(0)
    full = ModalityProjection(384, 64, hidden=32)
    torch.manual_seed(0)
    small = ModalityProjection(384, 64, hidden=32, init_gain=0.01)
    assert repr(small) == "ModalityProjection(384, 64, hidden=32, init_gain=0.01)"
    # Same draws: the hidden layer is untouched, the output layer is exactly gain x the default.
    torch.testing.assert_close(small.lin1.weight, full.lin1.weight, rtol=0, atol=0)
    torch.testing.assert_close(small.lin2.weight, 0.01 * full.lin2.weight, rtol=1e-6, atol=0)
    # Xavier-uniform bound: gain * sqrt(6 / (fan_in + fan_out)).
    assert float(small.lin2.weight.detach().abs().max()) <= 0.01 * (6 / (32 + 64)) ** 0.5
    zero = ModalityProjection(5, 3, init_gain=0.0)
    assert torch.equal(zero(torch.randn(4, 5)), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="init_gain"):
        ModalityProjection(5, 3, init_gain=-1.0)
