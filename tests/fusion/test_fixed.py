from __future__ import annotations

import numpy as np
import pytest

from fusion.fixed import combine_modalities


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
