"""Joint training, the pretraining baseline the meta-learners are measured against.

Finn et al. (2017, section 5.1) compare MAML with "pretraining on all of the tasks ... then, at
test time, fine-tuning with gradient descent on the K provided points"; Nichol et al. (2018,
section 5.1) show that one inner step (k = 1) makes Reptile and first-order MAML exactly this
joint training; Ravi & Larochelle's "Baseline-finetune", quoted in Finn et al.'s Table 1, is the
Mini-ImageNet version. No inner loop, no episodes: one network minimises the plain loss on the
union of the meta-training tasks, and is then adapted to each test task as the meta-learners are,
by full-batch SGD on the support set.

* Classification: minibatches of ``meta_batch`` images drawn uniformly from every meta-training
  class with their *global* labels (``ClassBatchSampler``), a linear head over all those classes
  on the model's features (``head``: used in training only), Adam. A test task's labels are a
  random assignment of ``ways`` classes the network never saw, so adaptation starts from a new
  ``ways``-way head at zero -- every class equally likely, no random draw -- and takes
  ``eval_inner_steps`` SGD steps on the whole network (``finetune: all``) or on that head alone
  (``finetune: head``, a linear probe of the pretrained features).
* Regression (the sine-wave study): the points of ``meta_batch`` tasks pooled into one batch and
  the network's own output regressed on them, so it learns the mean function over tasks; test-time
  adaptation fine-tunes every parameter (the study's shared SGD protocol).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gbml.algorithms.core import CLASSIFICATION, Generators, Objective, Params, expand_tasks, make_tasks_loss, sgd_step
from gbml.algorithms.learner import MetaLearner
from gbml.data.tasks import ClassBatchSampler, Episode, LabelledBatch, stack_tasks
from gbml.fields import check, choice, count, rate

HEAD = "classifier"   # the model's task head (Conv4.classifier): replaced by a fresh one per test task


@dataclass(frozen=True)
class PretrainConfig:
    # The grid's names, read by the report's tables: training steps and examples per step.
    meta_iters: int = count(10000)
    meta_batch: int = count(64)
    lr: float = rate(1e-3)                    # Adam
    train_shots: int = count(0, minimum=0)    # regression: points per pooled task; 0 = the setting's shots
    eval_inner_steps: int = count(10)         # test-time SGD steps on the support set
    eval_inner_lr: float = rate(0.1)
    finetune: str = choice("all", "head")     # what test-time SGD adapts

    def __post_init__(self):
        check(self)


class Pretrain(MetaLearner):
    """Training is one minibatch per step; test tasks adapt side by side, as the meta-learners'."""

    @staticmethod
    def episode_shape(cfg: PretrainConfig, shots: int) -> tuple[int, int]:
        """What classification's training draws from a class (the data checks ask): single
        examples, so one is enough."""
        return 1, 0

    def __init__(self, model: nn.Module, cfg: PretrainConfig, shots: int, seed: int = 0,
                 objective: Objective = CLASSIFICATION):
        self.model, self.cfg, self.objective = model, cfg, objective
        self.tasks_loss = make_tasks_loss(model, objective)
        self.params: Params = dict(model.named_parameters())
        self.classification = objective is CLASSIFICATION
        self.head: nn.Linear | None = None   # classification: bound to the training classes by bind_classes
        self.optimizer = torch.optim.Adam(self.trained_parameters(), lr=cfg.lr)
        self.meta_batch, self.meta_iters = cfg.meta_batch, cfg.meta_iters
        self.train_episode_shape = (cfg.train_shots or shots, 0)   # regression's pooled tasks

    def trained_parameters(self) -> list[torch.Tensor]:
        """What training updates: the body and the all-class head (classification), or every
        parameter of the model (regression: its output is the prediction)."""
        if not self.classification:
            return list(self.params.values())
        body = [p for n, p in self.params.items() if not n.startswith(HEAD + ".")]
        return body + (list(self.head.parameters()) if self.head else [])

    def bind_classes(self, classes: int) -> None:
        """Give the network its training head over ``classes`` classes (before any step)."""
        task_head = getattr(self.model, HEAD)
        self.head = nn.Linear(task_head.in_features, classes).to(task_head.weight)   # its device and dtype
        self.optimizer = torch.optim.Adam(self.trained_parameters(), lr=self.cfg.lr)

    def train_sampler(self, images: torch.Tensor, counts: torch.Tensor | None, seed: int) -> ClassBatchSampler:
        """Training's stream (classification): globally labelled images of every class."""
        if self.head is None:
            self.bind_classes(len(images))
        return ClassBatchSampler(images, seed=seed, counts=counts)

    def training_output(self, batch: LabelledBatch | Episode | list[Episode]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.classification:
            return self.head(self.model.features(batch.x)), batch.y
        tasks = stack_tasks(batch)   # regression: every task's points, pooled
        x = torch.cat([tasks.support_x, tasks.query_x], 1).flatten(0, 1)
        y = torch.cat([tasks.support_y, tasks.query_y], 1).flatten(0, 1)
        return self.model(x), y

    def meta_step(self, batch, iteration: int) -> dict[str, float]:
        """One step of plain supervised learning (the name is the training loop's)."""
        self.optimizer.zero_grad(set_to_none=True)
        out, y = self.training_output(batch)
        loss = self.objective.loss(out, y)
        loss.backward()
        self.optimizer.step()
        return {"train_loss": loss.item(), f"train_{self.objective.metric}": self.objective.score(out.detach(), y)}

    def initial_task_params(self, ways: int, tasks: int) -> Params:
        """The test-time starting point of ``tasks`` tasks (a leading task axis): the pretrained
        body with a zero ``ways``-way head (classification)."""
        params = dict(self.params)
        if self.classification:
            features = getattr(self.model, HEAD).in_features
            like = params[f"{HEAD}.weight"]
            params[f"{HEAD}.weight"] = like.new_zeros(ways, features)
            params[f"{HEAD}.bias"] = like.new_zeros(ways)
        return expand_tasks(params, tasks)

    def adapted_names(self, params: Params) -> list[str]:
        if self.cfg.finetune == "head" and self.classification:
            return [f"{HEAD}.weight", f"{HEAD}.bias"]
        return list(params)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, generator: Generators | None = None) -> Params:
        """Fine-tuning of a stack of tasks: ``eval_inner_steps`` full-batch SGD steps on each
        support set (``generator`` is unused)."""
        ways = int(support_y.max()) + 1 if self.classification else 0
        with torch.enable_grad():
            params = self.initial_task_params(ways, len(support_y))
            params = {n: p.detach().requires_grad_(True) if n.startswith(HEAD + ".") else p
                      for n, p in params.items()}
            names = self.adapted_names(params)
            for _ in range(self.cfg.eval_inner_steps):
                params = sgd_step(self.tasks_loss, params, support_x, support_y, self.cfg.eval_inner_lr, False, names)
        return {name: p.detach() for name, p in params.items()}

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.head is not None:
            state["head"] = self.head.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict`` (the training head sized from it, if none is bound yet)."""
        if "head" in state and self.head is None:
            self.bind_classes(len(state["head"]["bias"]))
        if "head" in state:
            self.head.load_state_dict(state["head"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
