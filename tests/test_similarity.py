"""Specification of the representation similarities against closed forms."""

import math

import pytest
import torch

from gbml.studies.similarity import canonical_correlations, linear_cka, mean_cca, positions_as_examples


def random(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(d, seed=1):
    q, _ = torch.linalg.qr(random(d, d, seed))
    return q


def test_linear_cka_from_gram_matrices_equals_the_feature_space_formula():
    x, y = random(30, 7), random(30, 4, seed=2)
    xc, yc = x - x.mean(0), y - y.mean(0)
    closed = (yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert linear_cka(x, y) == pytest.approx(closed.item(), rel=1e-12)


def test_linear_cka_is_one_under_orthogonal_maps_scaling_and_translation():
    x = random(40, 6)
    assert linear_cka(x, x @ orthogonal(6)) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, -3.5 * x + 2.0) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_is_not_invariant_to_a_general_linear_map_but_cca_is():
    x = random(200, 5)
    a = torch.diag(torch.tensor([1.0, 2.0, 5.0, 10.0, 30.0], dtype=torch.float64)) @ orthogonal(5)
    assert linear_cka(x, x @ a) < 0.95
    assert mean_cca(x, x @ a) == pytest.approx(1.0, abs=1e-10)


def test_linear_cka_is_symmetric_bounded_and_small_for_independent_representations():
    x, y = random(4000, 3), random(4000, 3, seed=5)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), rel=1e-12)
    assert 0.0 <= linear_cka(x, y) < 0.01


def test_linear_cka_of_a_constant_representation_is_undefined():
    assert math.isnan(linear_cka(torch.ones(10, 3), random(10, 3)))


def test_cca_of_one_dimension_is_the_absolute_pearson_correlation():
    x = random(500, 1)
    y = -0.7 * x + 0.5 * random(500, 1, seed=9)
    pearson = torch.corrcoef(torch.cat([x, y], 1).T)[0, 1].abs().item()
    assert mean_cca(x, y) == pytest.approx(pearson, rel=1e-10)


def test_cca_finds_a_shared_subspace_and_ignores_independent_directions():
    shared, noise = random(3000, 2), random(3000, 2, seed=3)
    x = torch.cat([shared, noise], 1)
    y = torch.cat([shared @ orthogonal(2), random(3000, 2, seed=4)], 1)
    rho = canonical_correlations(x, y)
    assert rho[:2].tolist() == pytest.approx([1.0, 1.0], abs=1e-10)
    assert rho[2:].max() < 0.1


def test_cca_refuses_fewer_examples_than_dimensions():
    with pytest.raises(ValueError, match="more examples than dimensions"):
        mean_cca(random(5, 8), random(5, 8, seed=1))


def test_conv_maps_are_compared_with_positions_as_examples():
    h = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    rows = positions_as_examples(h)
    assert rows.shape == (8, 3)
    assert rows[1].tolist() == h[0, :, 0, 1].tolist()
