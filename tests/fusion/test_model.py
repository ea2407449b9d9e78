from __future__ import annotations

import math

import pytest
import torch

from fusion.losses import alignment_loss, bpr_loss
from fusion.model import FusedGraphModel

U, N = 4, 5
DIMS = {"text": 12, "image": 10, "audio": 6}
# Each of the 4 users' interactions with the 5 items.
INTERACTIONS = [(0, 0), (0, 1), (1, 0), (1, 2), (1, 3), (2, 1), (3, 0), (3, 3), (3, 4)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a loaded 2-core machine the
    # thread hand-offs dominate (measured: 30 toy training steps 0.3 s on 1 thread, 7 s on 2).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_graph() -> torch.Tensor:
    ui = torch.tensor(INTERACTIONS).T  # [2, 9]
    ui = torch.stack([ui[0], ui[1] + U])  # items after users
    return torch.cat([ui, ui.flip(0)], dim=1)  # [2, 18]


def random_graph(num_users: int, num_items: int, num_edges: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(num_users * num_items, generator=g)[:num_edges]  # distinct pairs
    ui = torch.stack([flat // num_items, flat % num_items + num_users])  # [2, E]
    return torch.cat([ui, ui.flip(0)], dim=1)  # [2, 2E]


def toy_features(seed: int = 0, n: int = N, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(n, d, generator=g, dtype=dtype) for name, d in DIMS.items()}


def make(seed: int = 0, **kwargs) -> FusedGraphModel:
    torch.manual_seed(seed)
    kwargs = {"dim": 8, "num_layers": 2, "num_heads": 2, **kwargs}
    return FusedGraphModel(U, N, DIMS, **kwargs).double().eval()


def dense_lightgcn(emb: torch.Tensor, edge_index: torch.Tensor, num_layers: int) -> torch.Tensor:
    """Reference LightGCN: E^(l+1) = D^-1/2 A D^-1/2 E^(l), mean over layers, dense matrices."""
    n = emb.size(0)
    a = torch.zeros(n, n, dtype=emb.dtype)
    a[edge_index[0], edge_index[1]] = 1.0
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    a_hat = inv[:, None] * a * inv[None, :]
    layers = [emb]
    for _ in range(num_layers):
        layers.append(a_hat @ layers[-1])
    return torch.stack(layers).mean(0)


# ----------------------------------------------------------------------------- construction
def test_repr_and_token_order():
    model = FusedGraphModel(943, 1682, {"text": 384, "image": 1280})
    assert repr(model) == (
        "FusedGraphModel(num_users=943, num_items=1682, modality_dims={'text': 384, 'image': 1280}, "
        "dim=64, num_layers=3, num_heads=4, use_id=True, modality_dropout=0.0, id_dropout=0.0, "
        "dropout=0.0)"
    )
    assert model.modalities == ["text", "image", "id"]
    small = FusedGraphModel(2, 3, {"audio": 4, "text": 5}, dim=8, num_heads=2, use_id=False,
                            projection_hidden=16)
    assert small.modalities == ["audio", "text"]
    assert repr(small).endswith("use_id=False, modality_dropout=0.0, id_dropout=0.0, dropout=0.0, "
                                "projection_hidden=16)")
    assert FusedGraphModel(2, 3, {}).modalities == ["id"]
    residual = FusedGraphModel(2, 3, {"text": 5}, dim=8, num_heads=2, id_mode="residual", content_gain=0.01)
    assert repr(residual).endswith("dropout=0.0, id_mode='residual', content_gain=0.01)")
    assert repr(residual.projections["text"]) == "ModalityProjection(5, 8, init_gain=0.01)"
    xavier = FusedGraphModel(2, 3, {}, dim=8, num_heads=2, id_init="xavier")
    assert repr(xavier).endswith("dropout=0.0, id_init='xavier')")


def test_id_init_normal_or_xavier():
    torch.manual_seed(0)
    normal = FusedGraphModel(400, 600, {}, dim=64)
    assert normal.user_embedding.weight.std().item() == pytest.approx(0.1, rel=0.02)
    xavier = FusedGraphModel(400, 600, {}, dim=64, id_init="xavier")
    for table, rows in ((xavier.user_embedding, 400), (xavier.item_embedding, 600)):
        bound = math.sqrt(6 / (rows + 64))  # Xavier-uniform over fan_in + fan_out
        w = table.weight
        assert w.abs().max().item() <= bound and w.abs().max().item() > 0.95 * bound
    with pytest.raises(ValueError, match="id_init must be one of"):
        FusedGraphModel(2, 3, {}, id_init="zeros")


def test_bad_construction_raises():
    for name in ("id", "a.b", ""):
        with pytest.raises(ValueError, match=f"modality name '{name}' is not allowed: .* 'id' is the ID token's"):
            FusedGraphModel(2, 3, {name: 4})
    with pytest.raises(ValueError, match="no token to build items from"):
        FusedGraphModel(2, 3, {}, use_id=False)
    with pytest.raises(ValueError, match="modality 'text' has width 0"):
        FusedGraphModel(2, 3, {"text": 0})
    with pytest.raises(ValueError, match="positive sizes"):
        FusedGraphModel(0, 3, {"text": 4})
    with pytest.raises(ValueError, match="id_dropout must be in"):
        FusedGraphModel(2, 3, {"text": 4}, id_dropout=1.5)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        FusedGraphModel(2, 3, {"text": 4}, dim=10, num_heads=4)


def test_reset_parameters_is_deterministic_under_seed():
    model = make()
    torch.manual_seed(11)
    model.reset_parameters()
    first = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(12)
    model.reset_parameters()
    assert not torch.equal(first["user_embedding.weight"], model.user_embedding.weight)
    torch.manual_seed(11)
    model.reset_parameters()
    for k, v in model.state_dict().items():
        assert torch.equal(first[k], v), k


# ----------------------------------------------------------------------------- ID-only baseline
def test_id_only_model_is_exactly_lightgcn():
    num_users, num_items, layers = 7, 9, 3
    ei = random_graph(num_users, num_items, 20, seed=3)
    torch.manual_seed(0)
    model = FusedGraphModel(num_users, num_items, {}, dim=6, num_layers=layers).double()
    assert model.fusion is None and len(model.projections) == 0
    assert {n for n, _ in model.named_parameters()} == {"user_embedding.weight", "item_embedding.weight"}

    users, items, weights = model({}, None, ei)
    emb = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    ref = dense_lightgcn(emb, ei, layers)
    torch.testing.assert_close(users, ref[:num_users], rtol=0, atol=1e-12)
    torch.testing.assert_close(items, ref[num_users:], rtol=0, atol=1e-12)
    assert weights.shape == (num_items, 1) and (weights == 1).all()
    # training mode changes nothing: a single token is never dropped
    model.train()
    model.id_dropout = 1.0
    torch.testing.assert_close(model({}, None, ei)[1], items, rtol=0, atol=0)


def test_id_only_model_has_no_content_path():
    model = FusedGraphModel(2, 3, {})
    with pytest.raises(ValueError, match="ID-only model .* no vector for items without an ID"):
        model.item_content({}, item_ids=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="needs at least one modality in `features` or `item_ids`"):
        model.content_only({})


# ----------------------------------------------------------------------------- fused model
def test_forward_shapes_and_equals_propagated_item_content():
    model = make()
    feats = toy_features()
    ei = toy_graph()
    users, items, weights = model(feats, None, ei)
    assert users.shape == (U, 8) and items.shape == (N, 8) and weights.shape == (N, 4)
    layer0, w0 = model.item_content(feats, None, torch.arange(N))
    torch.testing.assert_close(weights, w0, rtol=0, atol=0)
    ref = dense_lightgcn(torch.cat([model.user_embedding.weight, layer0]).detach(), ei, 2)
    torch.testing.assert_close(torch.cat([users, items]), ref, rtol=0, atol=1e-12)


def test_missing_modality_gets_zero_weight_and_nan_features_are_harmless():
    model = make()
    feats = toy_features()
    present = {"image": torch.tensor([True, False, True, False, True])}
    feats["image"][~present["image"]] = float("nan")
    model.train()  # gradients through the LayerNorm of NaN rows must stay finite too
    model.modality_dropout = model.id_dropout = 0.0
    _, items, weights = model(feats, present, toy_graph())
    assert (weights[[1, 3], 1] == 0).all() and (weights[[0, 2, 4], 1] > 0).all()
    assert torch.isfinite(items).all()
    items.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_modality_absent_from_features_is_masked_for_every_row():
    model = make()
    text_only = {"text": toy_features()["text"]}
    vecs, weights = model.item_content(text_only)
    assert (weights[:, 1:] == 0).all() and (weights[:, 0] == 1).all()
    value_path = model.fusion.out_proj(model.fusion.v_proj(model.projections["text"](text_only["text"])))
    torch.testing.assert_close(vecs, value_path, rtol=0, atol=1e-12)


def test_item_content_batch_equals_one_at_a_time():
    model = make()
    feats = toy_features()
    present = {"audio": torch.tensor([True, False, True, True, False])}
    ids = torch.tensor([0, 1, -1, 3, -1])
    vecs, weights = model.item_content(feats, present, ids)
    for i in range(N):
        v, w = model.item_content({k: x[i : i + 1] for k, x in feats.items()},
                                  {k: m[i : i + 1] for k, m in present.items()}, ids[i : i + 1])
        torch.testing.assert_close(v[0], vecs[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(w[0], weights[i], rtol=0, atol=1e-12)


def test_content_only_model_ignores_ids():
    torch.manual_seed(0)
    model = FusedGraphModel(U, N, DIMS, dim=8, num_heads=2, use_id=False).double().eval()
    assert model.item_embedding is None and model.modalities == ["text", "image", "audio"]
    feats = toy_features()
    _, items, weights = model(feats, None, toy_graph())
    assert weights.shape == (N, 3)
    with_ids, _ = model.item_content(feats, None, torch.arange(N))
    torch.testing.assert_close(model.content_only(feats), with_ids)


# ----------------------------------------------------------------------------- cold start
def test_cold_start_path_gives_zero_weight_to_id_token():
    model = make()
    feats = toy_features()
    vecs, weights = model.item_content(feats, None, item_ids=None)
    assert (weights[:, -1] == 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(N, dtype=torch.float64))
    torch.testing.assert_close(model.content_only(feats), vecs, rtol=0, atol=0)

    _, mixed = model.item_content(feats, None, item_ids=torch.tensor([0, -1, 2, -1, 4]))
    assert (mixed[[1, 3], -1] == 0).all() and (mixed[[0, 2, 4], -1] > 0).all()
    torch.testing.assert_close(mixed[[1, 3]], weights[[1, 3]], rtol=0, atol=0)


def test_content_only_vector_does_not_depend_on_id_embeddings():
    model = make()
    feats = toy_features()
    before = model.content_only(feats)
    with torch.no_grad():
        model.item_embedding.weight.mul_(-3.0)
    torch.testing.assert_close(model.content_only(feats), before, rtol=0, atol=0)
    assert not torch.allclose(model.item_content(feats, None, torch.arange(N))[0],
                              make().item_content(feats, None, torch.arange(N))[0])


def test_forward_has_id_masks_cold_items():
    model = make()
    has_id = torch.tensor([True, True, False, True, False])
    _, _, weights = model(toy_features(), None, toy_graph(), has_id=has_id)
    assert (weights[~has_id, -1] == 0).all() and (weights[has_id, -1] > 0).all()


def test_row_without_any_token_raises():
    model = make()
    feats = {"text": toy_features()["text"]}
    present = {"text": torch.tensor([True, False, True, True, True])}
    with pytest.raises(ValueError, match=r"1 row\(s\) have no present token.*first rows \[1\]"):
        model.item_content(feats, present, item_ids=None)
    # with its ID the same item is fine
    model.item_content(feats, present, item_ids=torch.arange(N))


# ----------------------------------------------------------------------------- training mode
def test_dropout_only_in_training_and_eval_is_deterministic():
    feats, ei = toy_features(), toy_graph()
    noisy = make(modality_dropout=0.5, id_dropout=0.5, dropout=0.3)
    clean = make(seed=1)
    clean.load_state_dict(noisy.state_dict())
    first = noisy(feats, None, ei)
    second = noisy(feats, None, ei)
    reference = clean(feats, None, ei)
    for a, b, c in zip(first, second, reference):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    noisy.train()
    torch.manual_seed(0)
    trained = noisy(feats, None, ei)
    assert not torch.allclose(trained[1], first[1])


def test_token_dropout_never_masks_a_whole_row():
    model = make(modality_dropout=1.0, id_dropout=1.0).train()
    feats = toy_features(n=N)
    present = {"image": torch.tensor([False, True, False, True, False])}
    torch.manual_seed(0)
    for _ in range(20):
        _, weights = model.item_content(feats, present, torch.arange(N))
        nonzero = weights != 0
        assert (nonzero.sum(1) == 1).all()  # exactly one token survives per row ...
        assert not nonzero[[0, 2, 4], 1].any()  # ... and it is one the item really has
        assert (weights[nonzero] == 1).all()


def test_token_dropout_rates_apply_to_the_right_tokens():
    n = 4000
    torch.manual_seed(0)
    model = FusedGraphModel(2, n, {"text": 4, "image": 4}, dim=4, num_heads=1, modality_dropout=0.5)
    model.train()
    g = torch.Generator().manual_seed(1)
    feats = {"text": torch.randn(n, 4, generator=g), "image": torch.randn(n, 4, generator=g)}
    with torch.no_grad():
        _, weights = model.item_content(feats, None, torch.arange(n))
    dropped = (weights == 0).float().mean(0)  # [M]
    assert dropped[2] == 0  # id_dropout = 0: the ID token is never dropped
    # each modality token dropped with p = 0.5; 4000 draws -> std 0.008
    assert 0.46 < dropped[0] < 0.54 and 0.46 < dropped[1] < 0.54


def test_gradient_flows_to_projections_fusion_and_embeddings():
    model = make(projection_hidden=6).train()
    feats = toy_features()
    users, items, _ = model(feats, None, toy_graph())
    u = torch.tensor([0, 1, 2, 3])
    pos = torch.tensor([1, 2, 1, 4])
    neg = torch.tensor([3, 4, 0, 2])
    loss = bpr_loss(model.score(users[u], items[pos]), model.score(users[u], items[neg]))
    loss = loss + alignment_loss(model.content_only(feats), items.detach())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_short_training_fits_the_toy_graph():
    ei = toy_graph()
    model = make().train()
    feats = toy_features()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    seen = torch.zeros(U, N, dtype=torch.bool)
    seen[torch.tensor(INTERACTIONS).T.unbind()] = True
    pairs = [
        (u, p, q) for u in range(U) for p in range(N) for q in range(N) if seen[u, p] and not seen[u, q]
    ]
    u, pos, neg = torch.tensor(pairs).T  # every (user, positive, non-interacted) triple

    def step() -> tuple[float, float]:
        users, items, _ = model(feats, None, ei)
        rank = bpr_loss(model.score(users[u], items[pos]), model.score(users[u], items[neg]))
        align = alignment_loss(model.content_only(feats), items.detach())
        opt.zero_grad()
        (rank + align).backward()
        opt.step()
        return rank.item(), align.item()

    history = [step() for _ in range(30)]
    assert history[-1][0] < 0.5 * history[0][0]
    assert history[-1][1] < 0.5 * history[0][1]
    model.eval()
    users, items, _ = model(feats, None, ei)
    scores = model.score_all(users, items)
    assert (scores[u, pos] > scores[u, neg]).all()  # every training pair ranked correctly


# ----------------------------------------------------------------------------- scores, output
def test_score_score_all_and_normalize_output():
    g = torch.Generator().manual_seed(0)
    users = torch.randn(3, 4, generator=g, dtype=torch.float64)
    items = torch.randn(5, 4, generator=g, dtype=torch.float64)
    model = FusedGraphModel(3, 5, {})
    full = model.score_all(users, items)
    assert full.shape == (3, 5)
    assert full[2, 4].item() == pytest.approx(float(sum(users[2, k] * items[4, k] for k in range(4))))
    torch.testing.assert_close(model.score(users, items[:3]), full.diagonal())
    idx = torch.tensor([[0, 1], [2, 3], [4, 0]])  # two items per user
    negs = items[idx]  # [3, 2, 4]
    torch.testing.assert_close(model.score(users.unsqueeze(1), negs), full.gather(1, idx))
    unit = model.normalize_output(items)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(unit * items.norm(dim=1, keepdim=True), items)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_with_clear_messages():
    model = make()
    feats = toy_features()
    with pytest.raises(ValueError, match=r"unknown modalities \['video'\]"):
        model.item_content({**feats, "video": torch.zeros(N, 3)})
    with pytest.raises(ValueError, match=r"features\['image'\] must have shape \[N, 10\], got \[5, 9"):
        model.item_content({**feats, "image": torch.zeros(N, 9)})
    with pytest.raises(ValueError, match="disagree on the number of items"):
        model.item_content({**feats, "audio": torch.zeros(N + 1, 6)})
    with pytest.raises(ValueError, match=r"present\['text'\] must be a bool tensor of shape \[5\]"):
        model.item_content(feats, {"text": torch.ones(N)})
    with pytest.raises(ValueError, match=r"present\['audio'\] given but features has no 'audio'"):
        model.item_content({"text": feats["text"]}, {"audio": torch.ones(N, dtype=torch.bool)})
    with pytest.raises(ValueError, match="item_ids holds 5 but the model has 5 item embeddings"):
        model.item_content(feats, None, torch.tensor([0, 1, 2, 3, 5]))
    with pytest.raises(ValueError, match="forward needs features of all 5 items"):
        model({k: x[:3] for k, x in feats.items()}, None, toy_graph())
