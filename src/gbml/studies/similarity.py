"""Representation similarity for the feature-reuse study (Raghu et al. 2020, section 3.2.2).

Raghu et al. compare each layer's representation of the same inputs before and after the inner
loop with CCA (Raghu et al. 2017; Morcos et al. 2018) and check it with linear CKA (Kornblith et
al. 2019). Both are a few lines of linear algebra, written here rather than taken from a package:
no maintained package on the index offers both, and these are tested against closed forms
(``tests/test_similarity.py``).

* ``linear_cka``: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` for column-centred ``X, Y``,
  computed from the n x n Gram matrices (``||Y^T X||_F^2 = <XX^T, YY^T>``), so a conv layer's
  flattened map (thousands of features) costs n^2, not features^2. Invariant to orthogonal maps
  and isotropic scaling, not to general invertible linear maps.
* ``mean_cca``: the mean canonical correlation, the singular values of ``Q_x^T Q_y`` for
  orthonormal bases of the centred column spaces; invariant to any invertible linear map. It needs
  more examples than dimensions (with n <= d every pair of generic subspaces correlates
  perfectly), so conv maps are compared as (examples x positions, channels), as Raghu et al. do.
"""

from __future__ import annotations

import math

import torch


def centred(x: torch.Tensor) -> torch.Tensor:
    """``x`` as [examples, features] in float64, each feature's mean removed."""
    x = x.reshape(len(x), -1).double()
    return x - x.mean(0)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same ``n`` examples ([n, ...] each); NaN when
    either is constant over the examples (the similarity is undefined)."""
    if len(x) != len(y):
        raise ValueError(f"representations of the same examples needed, got {len(x)} and {len(y)} rows")
    gram_x, gram_y = (z @ z.T for z in (centred(x), centred(y)))
    denominator = gram_x.norm() * gram_y.norm()
    return math.nan if denominator == 0 else ((gram_x * gram_y).sum() / denominator).item()


def orthonormal_basis(x: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """An orthonormal basis ([n, rank]) of the centred columns of ``x``."""
    u, s, _ = torch.linalg.svd(centred(x), full_matrices=False)
    return u[:, s > rtol * s.max()] if len(s) and s.max() > 0 else u[:, :0]


def canonical_correlations(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The canonical correlations of ``x`` and ``y`` ([n, d_x], [n, d_y]), largest first."""
    if len(x) != len(y):
        raise ValueError(f"representations of the same examples needed, got {len(x)} and {len(y)} rows")
    dims = max(x[0].numel(), y[0].numel())
    if len(x) <= dims:
        raise ValueError(f"CCA needs more examples than dimensions, got {len(x)} examples of {dims}: "
                         "with that few, any two generic representations correlate perfectly")
    qx, qy = orthonormal_basis(x), orthonormal_basis(y)
    return torch.linalg.svdvals(qx.T @ qy).clamp(max=1.0)


def mean_cca(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean canonical correlation (Raghu et al. 2020's "CCA similarity"); NaN when either
    representation is constant."""
    rho = canonical_correlations(x, y)
    return rho.mean().item() if len(rho) else math.nan


def positions_as_examples(h: torch.Tensor) -> torch.Tensor:
    """A conv map [n, C, H, W] as [n * H * W, C]: each spatial position an example of the
    channels (how Raghu et al. apply CCA to convolutional layers)."""
    return h.movedim(1, -1).reshape(-1, h.shape[1]) if h.dim() == 4 else h
