import numpy as np
import pytest
import torch

from vit_exp.fewshot import extract_features, fewshot_accuracy, ridge_fit, sample_shots
from vit_exp.models import create_model


def test_ridge_equals_a_direct_least_squares_solution():
    rng = np.random.default_rng(0)
    x, y, l2 = rng.normal(size=(40, 6)), rng.integers(0, 3, size=40), 3.0
    xb = np.hstack([x, np.ones((40, 1))])
    t = 2.0 * np.eye(3)[y] - 1.0
    # ridge = least squares on the system augmented with sqrt(l2) * I rows
    a = np.vstack([xb, np.sqrt(l2) * np.eye(7)])
    b = np.vstack([t, np.zeros((7, 3))])
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    got = ridge_fit(torch.from_numpy(x), torch.from_numpy(y), 3, l2_reg=l2).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


def test_shots_are_per_class_and_reproducible():
    labels = torch.arange(10).repeat(7)
    idx = sample_shots(labels, 5, seed=3)
    assert torch.bincount(labels[idx]).tolist() == [5] * 10
    assert torch.equal(idx, sample_shots(labels, 5, seed=3))
    assert not torch.equal(idx, sample_shots(labels, 5, seed=4))
    with pytest.raises(ValueError, match="fewer than 8 shots"):
        sample_shots(labels, 8, seed=0)


def test_fewshot_on_digit_pixels_is_far_above_chance():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.from_numpy(x / 16.0), torch.from_numpy(y)
    acc = fewshot_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], shots=(1, 10))  # whitened, l2 2^10: 0.83
    assert acc[10] > 0.8 > 0.1  # chance is 0.1
    assert acc[10] > acc[1]


def test_extract_features_gives_pre_logits_in_order():
    model = create_model("vit_test", img_size=32, representation_size=16, num_classes=4)
    batches = [(torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])), (torch.randn(2, 3, 32, 32), torch.tensor([3, 0]))]
    feats, labels = extract_features(model, batches)
    assert feats.shape == (5, 16) and labels.tolist() == [0, 1, 2, 3, 0]
    assert model.training  # restored
