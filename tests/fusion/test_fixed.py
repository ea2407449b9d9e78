from __future__ import annotations

import numpy as np
import pytest

from fusion.fixed import CENTER_MIN_ITEMS, combine_modalities, modality_centers


def test_weighted_mean_of_cosines():
    text = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    image = np.array([[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    v = combine_modalities({"text": text, "image": image}, weights={"text": 3, "image": 1})
    # order is sorted: image first, then text
    expected0 = np.concatenate([np.sqrt(0.25) * np.array([0, 1, 0]), np.sqrt(0.75) * np.array([0.6, 0.8])])
    np.testing.assert_allclose(v[0], expected0, atol=1e-6)
    # inner product == 0.75 * cos_text + 0.25 * cos_image = 0.75 * 0.6 + 0.25 * 1
    assert v[0] @ v[1] == pytest.approx(0.75 * 0.6 + 0.25 * 1.0, abs=1e-6)


def test_missing_modality_renormalises_over_present_ones():
    text = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    image = np.array([[1.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    v = combine_modalities(
        {"text": text, "image": image}, present={"image": np.array([True, False])}, order=["text", "image"]
    )
    np.testing.assert_allclose(v[1], [0.0, 1.0, 0.0, 0.0], atol=1e-7)  # image row ignored entirely
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), [1.0, 1.0], atol=1e-6)


def test_zero_row_counts_as_missing_and_all_missing_raises():
    text = np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    with pytest.raises(ValueError, match=r"positions \[0\] have no modality"):
        combine_modalities({"text": text})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": {"audio": 1.0}}, "unknown modalities"),
        ({"weights": {"text": -1.0}}, "non-negative"),
        ({"order": ["image"]}, "does not match"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        combine_modalities({"text": np.ones((2, 2), np.float32)}, **kwargs)


def test_without_renormalisation_missing_modalities_contribute_zero():
    text = np.array([[1.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    image = np.array([[0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    v = combine_modalities({"text": text, "image": image}, weights={"text": 1, "image": 3},
                           order=["text", "image"], renormalize=False)
    np.testing.assert_allclose(v, [[0.5, 0.0, 0.0, np.sqrt(0.75)], [0.5, 0.0, 0.0, 0.0]], atol=1e-7)
    assert v[0] @ v[1] == pytest.approx(0.25)  # only the shared text modality counts: w_text * cos


def test_modality_centers_exact_means_over_present_items_only():
    text = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 3.0], [9.0, 9.0]], np.float32)
    image = np.array([[1.0, 1.0, 1.0]] * 4, np.float32)  # every item alike: centring would leave nothing
    audio = np.array([[1.0], [2.0], [0.0], [0.0]], np.float32)  # two items have it (zero rows do not)
    got = modality_centers({"text": text, "image": image, "audio": audio},
                           {"text": np.array([True, True, True, False])}, min_items=2)
    assert sorted(got) == ["audio", "text"]
    np.testing.assert_array_equal(got["text"], [1.0, 2.0])  # row 3 is absent
    np.testing.assert_array_equal(got["audio"], [1.5])
    assert modality_centers({"text": text}, min_items=5) == {}  # too few items: not centred
    assert CENTER_MIN_ITEMS == 32
    assert modality_centers({"text": np.ones((CENTER_MIN_ITEMS - 1, 2), np.float32) * np.arange(1, 32)[:, None]}) == {}


def test_centred_combination_is_the_cosine_from_the_mean():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]], np.float32)
    center = {"t": np.array([0.5, 0.5], np.float32)}
    v = combine_modalities({"t": x}, centers=center, renormalize=False)
    s = np.sqrt(0.5)
    # Rows less (0.5, 0.5), then unit: (s, -s), (-s, s), (s, s); row 3 IS the mean: zero, still present.
    np.testing.assert_allclose(v, [[s, -s], [-s, s], [s, s], [0.0, 0.0]], atol=1e-7)
    plain = combine_modalities({"t": x}, renormalize=False)
    assert plain[0] @ plain[1] == pytest.approx(0.0) and v[0] @ v[1] == pytest.approx(-1.0)
    # Only the named modalities are centred; absent rows stay zero whatever the centre.
    w = combine_modalities({"t": x, "u": x}, {"t": np.array([True, False, True, True])}, order=["t", "u"],
                           renormalize=False, centers=center)
    np.testing.assert_allclose(w[1], [0.0, 0.0, 0.0, np.sqrt(0.5)], atol=1e-7)
    np.testing.assert_allclose(w[0], [0.5, -0.5, np.sqrt(0.5), 0.0], atol=1e-7)
    # Renormalised, the row equal to the centre stays zero (no NaN); an absent row holding NaN is ignored.
    u = combine_modalities({"t": x}, centers=center)
    np.testing.assert_array_equal(u[3], [0.0, 0.0])
    nan = np.array([[1.0, 0.0], [np.nan, np.nan]], np.float32)
    np.testing.assert_array_equal(combine_modalities({"t": nan, "u": np.ones((2, 1), np.float32)},
                                                     {"t": np.array([True, False])}, order=["t", "u"])[1], [0, 0, 1])
    with pytest.raises(ValueError, match=r"centre of modality 't' has shape \(3,\), its vectors 2 columns"):
        combine_modalities({"t": x}, centers={"t": np.zeros(3, np.float32)})


def test_huge_and_tiny_rows_keep_their_direction():
    # float32 squares overflow from entries near 1e19 and underflow below 1e-23: norms in float64.
    x = np.array([[3e20, 4e20], [3e-25, 4e-25], [3.0, 4.0]], np.float32)
    v = combine_modalities({"t": x})
    np.testing.assert_allclose(v, [[0.6, 0.8]] * 3, rtol=1e-6)
