"""Joint training, the pretraining baseline: plain classification of every meta-training class,
then fine-tuning on each test task's support set from a zero head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gbml.algorithms.core import REGRESSION
from gbml.algorithms.pretrain import Pretrain, PretrainConfig
from gbml.data.sine import SineTaskSampler
from gbml.data.tasks import ClassBatchSampler, stack_tasks
from gbml.models.mlp import MLP
from helpers import adapt_one, flat, predict_one, random_episode, tiny_model

HEAD = ("classifier.weight", "classifier.bias")


def labelled_images(classes: int, examples: int, counts: list[int] | None = None) -> torch.Tensor:
    """uint8 images whose every pixel is their class index (and 255 in padding slots)."""
    images = torch.arange(classes, dtype=torch.uint8).view(-1, 1, 1, 1, 1).expand(classes, examples, 1, 8, 8).clone()
    for c, n in enumerate(counts or []):
        images[c, n:] = 255
    return images


def test_a_class_batch_labels_each_image_with_its_class_and_never_draws_padding():
    counts = [20, 5, 1, 12]
    sampler = ClassBatchSampler(labelled_images(4, 20, counts), seed=0, counts=torch.tensor(counts))
    batch = sampler.sample_tasks(4000)
    assert batch.x.shape == (4000, 1, 8, 8)
    assert torch.equal((batch.x[:, 0, 0, 0] * 255).round().long(), batch.y)   # no 255: no padding
    share = torch.bincount(batch.y, minlength=4).double() / 4000
    assert torch.allclose(share, torch.tensor(counts).double() / sum(counts), atol=0.03)   # uniform over examples


def test_the_stream_continues_from_its_generator_state():
    images = labelled_images(6, 3)
    a = ClassBatchSampler(images, seed=3)
    a.sample_tasks(7)
    state = a.generator.get_state()
    expected = a.sample_tasks(5).y
    b = ClassBatchSampler(images, seed=3)
    b.generator.set_state(state)
    assert torch.equal(b.sample_tasks(5).y, expected)


def classifier(classes: int = 6, **cfg) -> Pretrain:
    algo = Pretrain(tiny_model(ways=3), PretrainConfig(**cfg), shots=2)
    algo.bind_classes(classes)
    return algo


def global_batch(classes: int = 6, n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(classes, 4, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    batch = ClassBatchSampler(images, seed=seed).sample_tasks(n)
    return type(batch)(batch.x.double(), batch.y)


def test_a_training_step_is_adam_on_the_cross_entropy_over_all_classes():
    """Adam's first step moves each trained parameter by lr * sign(gradient); the gradient of
    the all-class cross-entropy is checked by central differences, and the task head (replaced at
    test time) is not trained."""
    lr = 1e-3
    algo, batch = classifier(lr=lr), global_batch()
    trained = dict(algo.model.named_parameters()) | {f"head.{n}": p for n, p in algo.head.named_parameters()}
    before = {n: p.detach().clone() for n, p in trained.items()}

    def loss() -> float:
        with torch.no_grad():
            return F.cross_entropy(algo.head(algo.model.features(batch.x)), batch.y).item()

    probes = [(next(iter(trained)), 0), ("head.weight", 3), ("head.bias", 5)]   # first conv, the new head
    slopes = {}
    for name, index in probes:
        p, h = trained[name].data.view(-1), 1e-6
        p[index] += h
        up = loss()
        p[index] -= 2 * h
        down = loss()
        p[index] += h
        slopes[(name, index)] = (up - down) / (2 * h)

    start = loss()
    assert algo.meta_step(batch, 0)["train_loss"] == pytest.approx(start, rel=1e-12)
    for (name, index), slope in slopes.items():
        moved = (trained[name].detach().view(-1)[index] - before[name].view(-1)[index]).item()
        assert abs(slope) > 1e-4 and moved == pytest.approx(-lr * torch.sign(torch.tensor(slope)).item(), rel=1e-3)
    for name in HEAD:
        assert torch.equal(trained[name].detach(), before[name])


def test_one_head_step_from_zero_is_the_closed_form():
    """From a zero head every class has probability 1/ways, so one SGD step at rate a gives
    W = a/N sum_i (e_{y_i} - 1/ways) f_i^T and b = a/N sum_i (e_{y_i} - 1/ways): the class means of
    the features, centred."""
    a, episode = 0.3, random_episode(ways=3, shots=4, seed=1)
    algo = classifier(eval_inner_steps=1, eval_inner_lr=a, finetune="head")
    adapted = adapt_one(algo, episode)
    with torch.no_grad():
        f = algo.model.features(episode.support_x)
    residual = F.one_hot(episode.support_y, 3).double() - 1 / 3
    assert torch.allclose(adapted["classifier.weight"], a * residual.T @ f / len(f), atol=1e-12)
    assert torch.allclose(adapted["classifier.bias"], a * residual.mean(0), atol=1e-12)


@pytest.mark.parametrize("finetune, body_moves", [("head", False), ("all", True)])
def test_fine_tuning_adapts_what_it_says_and_leaves_the_pretrained_network_alone(finetune, body_moves):
    algo, episode = classifier(eval_inner_steps=3, eval_inner_lr=0.5, finetune=finetune), random_episode(seed=2)
    before = {n: p.detach().clone() for n, p in algo.params.items()}
    adapted = adapt_one(algo, episode)
    body = [n for n in before if n not in HEAD]
    assert any(not torch.equal(adapted[n], before[n]) for n in body) == body_moves
    assert all(torch.equal(p.detach(), before[n]) for n, p in algo.params.items())
    assert adapted["classifier.weight"].shape == (3, algo.model.classifier.in_features)


def test_the_first_step_from_a_zero_head_leaves_the_body_where_it_was():
    """The features' gradient passes through the head, which is zero: fine-tuning the whole
    network moves the body only from the second step on."""
    episode = random_episode(seed=3)
    algo = classifier(eval_inner_steps=1, finetune="all")
    adapted = adapt_one(algo, episode)
    assert all(torch.equal(adapted[n], p.detach()) for n, p in algo.params.items() if n not in HEAD)


def test_a_stack_of_tasks_adapts_and_scores_as_each_task_alone():
    algo = classifier(eval_inner_steps=3, eval_inner_lr=0.5)
    episodes = [random_episode(seed=s) for s in range(3)]
    alone = [predict_one(algo, adapt_one(algo, e), e.query_x) for e in episodes]
    tasks = stack_tasks(episodes)
    together = algo.predict(algo.adapt(tasks.support_x, tasks.support_y), tasks.query_x)
    assert torch.allclose(together, torch.stack(alone), atol=1e-10)


def test_a_checkpoint_restores_the_training_head_it_was_saved_with():
    algo = classifier(classes=7)
    algo.meta_step(global_batch(classes=7), 0)
    fresh = Pretrain(tiny_model(ways=3, seed=1), PretrainConfig(), shots=2)
    fresh.load_state_dict(algo.state_dict())
    assert torch.equal(fresh.head.weight, algo.head.weight)
    assert torch.equal(flat(fresh.params.values()), flat(p.detach() for p in algo.params.values()))


def test_regression_regresses_on_every_task_s_points_pooled():
    """The sine study's baseline: the gradient of its loss is the mean of the tasks' own MSE
    gradients (equal point counts), so Adam's first step is -lr * sign of that mean."""
    torch.manual_seed(0)
    model, lr = MLP(1, 1, 8, 2, "tanh").double(), 1e-3
    algo = Pretrain(model, PretrainConfig(meta_batch=3, lr=lr, train_shots=4), shots=4, objective=REGRESSION)
    tasks = SineTaskSampler(4, 2, seed=0).sample_batch(3)
    tasks = [type(t)(*(v.double() for v in (t.support_x, t.support_y, t.query_x, t.query_y))) for t in tasks]
    params = list(model.parameters())
    per_task = [torch.autograd.grad(F.mse_loss(model(torch.cat([t.support_x, t.query_x])),
                                               torch.cat([t.support_y, t.query_y])), params) for t in tasks]
    mean_grad = flat(sum(g[i] for g in per_task) / 3 for i in range(len(params)))
    before = flat(p.detach() for p in params).clone()
    algo.meta_step(tasks, 0)
    assert torch.allclose(flat(p.detach() for p in params) - before, -lr * mean_grad.sign(), rtol=1e-4, atol=0)
