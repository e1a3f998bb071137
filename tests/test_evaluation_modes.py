"""Transductive vs non-transductive evaluation (Nichol et al. 2018, section 5) and the
grouped batch norm that implements the latter in one forward pass."""

from __future__ import annotations

import torch

from gbml.algorithms.core import make_predict
from gbml.data.tasks import Episode
from gbml.evaluate import predict_query
from helpers import random_episode, tiny_model


def with_queries(ep: Episode, query_x: torch.Tensor) -> Episode:
    return Episode(ep.support_x, ep.support_y, query_x, ep.query_y)


def setup():
    model = tiny_model()
    return make_predict(model), dict(model.named_parameters()), random_episode(queries=2, seed=1)


@torch.no_grad()
def test_non_transductive_prediction_ignores_the_other_queries():
    predict, params, ep = setup()
    changed = ep.query_x.clone()
    changed[1:] = torch.rand_like(changed[1:]) * 5
    a = predict_query(predict, params, ep, "non_transductive")[0]
    b = predict_query(predict, params, with_queries(ep, changed), "non_transductive")[0]
    torch.testing.assert_close(a, b)


@torch.no_grad()
def test_transductive_prediction_depends_on_the_other_queries():
    predict, params, ep = setup()
    changed = ep.query_x.clone()
    changed[1:] = torch.rand_like(changed[1:]) * 5
    a = predict_query(predict, params, ep, "transductive")[0]
    b = predict_query(predict, params, with_queries(ep, changed), "transductive")[0]
    assert not torch.allclose(a, b)


@torch.no_grad()
def test_non_transductive_equals_one_forward_pass_per_query_with_the_support_set():
    predict, params, ep = setup()
    batched = predict_query(predict, params, ep, "non_transductive")
    loop = torch.stack([predict(params, torch.cat([ep.support_x, q[None]]))[-1] for q in ep.query_x])
    torch.testing.assert_close(batched, loop)
