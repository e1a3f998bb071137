"""MAML++'s checkpoint ensemble (top-N by validation accuracy, logits averaged) and Raghu et
al.'s NIL classifier, each against a direct computation."""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from gbml.algorithms.maml import MAML, MAMLConfig
from gbml.data.tasks import Episode, stack_tasks
from gbml.evaluate import ensemble_logits, nil_log_probs, predict_query
from gbml.checkpoints import TopCheckpoints
from helpers import random_episode, tiny_model


def test_top_checkpoints_keeps_the_n_best_by_validation_accuracy_earlier_first_on_ties(tmp_path):
    keeper = TopCheckpoints(2, tmp_path / "ensemble")
    for step, acc in [(10, 0.5), (20, 0.7), (30, 0.6), (40, 0.7), (50, 0.4)]:
        keeper.offer(step, acc, {"step": torch.tensor(step)})
    keeper.write_manifest()
    members = json.loads((tmp_path / "ensemble" / "members.json").read_text())
    assert [(m["step"], m["val_acc"]) for m in members] == [(20, 0.7), (40, 0.7)]
    assert sorted(p.name for p in (tmp_path / "ensemble").glob("*.pt")) == ["step0000020.pt", "step0000040.pt"]
    state = torch.load(tmp_path / "ensemble" / "step0000040.pt", weights_only=True)
    assert state["step"].item() == 40


def test_an_ensemble_averages_its_members_adapted_logits_and_one_member_is_the_model_itself():
    episode = random_episode(queries=2, seed=3)
    members = [MAML(tiny_model(seed=s), MAMLConfig(inner_lr=0.5, eval_inner_steps=2), shots=2) for s in (0, 1)]
    task = (0, [0])   # the evaluation's seed and the episode's task index
    modes = ("transductive", "non_transductive")
    tasks = stack_tasks([episode])
    with torch.no_grad():
        both = ensemble_logits(members, tasks, 3, task, modes)
        single = [ensemble_logits([m], tasks, 3, task, modes) for m in members]
        for mode in modes:
            direct = [predict_query(m.predict, m.adapt(tasks.support_x, tasks.support_y), tasks, mode)
                      for m in members]
            torch.testing.assert_close(single[0][mode], direct[0])
            torch.testing.assert_close(both[mode], (direct[0] + direct[1]) / 2)


def test_nil_weights_support_labels_by_softmaxed_cosine_similarity_of_features():
    episode = random_episode(ways=3, shots=2, queries=2, seed=4)
    model = tiny_model()
    with torch.no_grad():
        log_probs = nil_log_probs(model.features, episode, 3)
        support, query = model.features(episode.support_x), model.features(episode.query_x)
    for q in range(len(query)):
        sims = [F.cosine_similarity(query[q], s, dim=0).item() for s in support]
        weights = [math.exp(v) for v in sims]
        for c in range(3):
            expected = sum(w for w, y in zip(weights, episode.support_y) if y == c) / sum(weights)
            assert math.isclose(log_probs[q, c].exp().item(), expected, rel_tol=1e-9)


def test_nil_with_one_shot_picks_the_class_of_the_most_similar_support_example():
    # Features = the flattened image: a query equal to a support image is classified as its class.
    episode = random_episode(ways=3, shots=1, queries=1, seed=5)
    query_x = episode.support_x[[2, 0, 1]]
    queries = Episode(episode.support_x, episode.support_y, query_x, episode.query_y)
    log_probs = nil_log_probs(lambda x: x.flatten(1), queries, 3)
    assert log_probs.argmax(-1).tolist() == [2, 0, 1]
