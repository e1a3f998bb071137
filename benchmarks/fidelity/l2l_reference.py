"""Train and score learn2learn's MAML, first-order MAML and ANIL on gbml's prepared Omniglot arrays.

The reference is the installed learn2learn 0.2.0 (``benchmarks/setup_anchors.sh`` builds it into
``.venv-bench``): its ``OmniglotCNN`` (stride-2 convolutions, batch norm with U(0, 1) weights,
mean-pooled N(0, 1) head) and its ``l2l.algorithms.MAML`` (``clone`` / ``adapt``), driven the way
its examples drive them: ``examples/vision/maml_omniglot.py`` (per task: clone, adapt on the
support set, the query loss backpropagated; gradients divided by the meta-batch; Adam) and, for
ANIL, ``examples/vision/anil_fc100.py`` (the features meta-learned outside the inner loop,
``MAML`` wrapping the classifier alone). The hyperparameters are ``maml_omniglot.py``'s (5-way
1-shot, meta-batch 32, one inner step at 0.5, Adam at 0.003). Tasks come from the prepared arrays
(the example's own Omniglot loader inverts and Lanczos-resizes, and its split is ineffective --
every split samples all 1,623 characters), so both implementations see identical pixels.

Two departures, the same on both sides: the ANIL example computes the features of support and
query in one batch (batch norm then mixes their statistics); here, as in the MAML example and in
gbml, the support set and the queries pass through separately. Evaluation is transductive (the
queries in one batch, the example's ``fast_adapt``) and non-transductive (each query beside the
support set), on ``--eval-samples`` test tasks per mode.

    python benchmarks/fidelity/l2l_reference.py --algorithm maml --prepared DIR --seed 0 --out result.json
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reference_result import write_result   # beside this script, on sys.path when it runs

MODES = ("transductive", "non_transductive")


def import_reference():
    """learn2learn, imported as benchmarks/anchors.py imports it (torchvision's CUDA-only wheel
    needs two op schemas declared beside CPU torch)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from anchors import import_learn2learn
    try:
        return import_learn2learn()
    except ImportError:
        sys.exit("learn2learn is not installed here; build .venv-bench with `bash benchmarks/setup_anchors.sh` "
                 "and run this script with .venv-bench/bin/python")


class Split:
    """One prepared split: uint8 images [classes, 20, 1, 28, 28] (rotations included as classes
    where the split is rotated) served as float tensors in {0, 1}."""

    def __init__(self, prepared: Path, split: str):
        from gbml.data.prepared import load_split
        self.images = load_split(prepared, split).images.float() / 255.0

    def task(self, rng: np.random.RandomState, ways: int, shots: int, queries: int):
        """Support x [N*K, 1, 28, 28], y [N*K]; queries x [N*Q, ...], y [N*Q], class-major."""
        classes = rng.choice(len(self.images), size=ways, replace=False)
        picks = np.stack([rng.choice(self.images.shape[1], size=shots + queries, replace=False) for _ in classes])
        x = self.images[torch.as_tensor(classes)[:, None], torch.as_tensor(picks)]     # [N, K+Q, 1, 28, 28]
        y = torch.arange(ways)[:, None].expand(ways, shots + queries)
        return (x[:, :shots].flatten(0, 1), y[:, :shots].flatten(), x[:, shots:].flatten(0, 1),
                y[:, shots:].flatten())


class Learner:
    """The example's model and inner loop: MAML / FOMAML adapt the whole network, ANIL the head."""

    def __init__(self, l2l, algorithm: str, ways: int, fast_lr: float, meta_lr: float):
        self.algorithm = algorithm
        self.model = l2l.vision.models.OmniglotCNN(ways)
        if algorithm == "anil":
            self.features = self.model.features
            self.head = l2l.algorithms.MAML(self.model.classifier, lr=fast_lr)
            params = [*self.features.parameters(), *self.head.parameters()]
        else:
            self.features = nn.Identity()
            self.head = l2l.algorithms.MAML(self.model, lr=fast_lr, first_order=algorithm == "fomaml")
            params = list(self.head.parameters())
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=meta_lr)
        self.loss = nn.CrossEntropyLoss(reduction="mean")

    def adapt(self, support_x, support_y, steps: int):
        learner = self.head.clone()
        features = self.features(support_x)
        for _ in range(steps):
            learner.adapt(self.loss(learner(features), support_y))
        return learner

    def logits(self, learner, x):
        return learner(self.features(x))

    def meta_step(self, tasks, steps: int) -> float:
        """One outer step as maml_omniglot.py takes it: each task's query loss backpropagated,
        the summed gradients divided by the meta-batch, Adam."""
        self.optimizer.zero_grad()
        total = 0.0
        for sx, sy, qx, qy in tasks:
            learner = self.adapt(sx, sy, steps)
            loss = self.loss(self.logits(learner, qx), qy)
            loss.backward()
            total += loss.item()
        for p in self.params:
            p.grad.data.mul_(1.0 / len(tasks))
        self.optimizer.step()
        return total / len(tasks)


def score(learner: Learner, split: Split, args, mode: str) -> list[int]:
    """Per-task correct counts on ``--eval-samples`` test tasks (task i from (eval-seed, i))."""
    correct = []
    for i in range(args.eval_samples):
        sx, sy, qx, qy = split.task(np.random.RandomState([args.eval_seed, i]), args.classes, args.shots,
                                    args.queries)
        adapted = learner.adapt(sx, sy, args.eval_steps)
        with torch.no_grad():
            if mode == "transductive":
                predicted = learner.logits(adapted, qx).argmax(1)
            else:
                predicted = torch.stack([learner.logits(adapted, torch.cat([sx, q[None]]))[-1].argmax()
                                         for q in qx])
        correct.append(int((predicted == qy).sum()))
    return correct


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--algorithm", choices=["maml", "fomaml", "anil"], required=True)
    p.add_argument("--prepared", type=Path, required=True, help="gbml's data/prepared/omniglot")
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    p.add_argument("--reference", type=Path, help="unused: learn2learn is the installed package")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=1234, help="test task i is drawn from (eval-seed, i)")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=1, help="test queries per class")
    p.add_argument("--train-queries", type=int, default=1, help="training queries per class (the example: shots)")
    p.add_argument("--meta-iters", type=int, default=1000)
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--meta-lr", type=float, default=0.003)
    p.add_argument("--fast-lr", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=1, help="inner steps in training")
    p.add_argument("--eval-steps", type=int, default=1, help="inner steps at evaluation")
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    l2l = import_reference()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    train_split, test_split = Split(args.prepared, "train"), Split(args.prepared, "test")
    learner = Learner(l2l, args.algorithm, args.classes, args.fast_lr, args.meta_lr)
    result = {"implementation": f"learn2learn {l2l.__version__}",
              "settings": vars(args) | {"prepared": str(args.prepared), "out": str(args.out),
                                        "reference": str(args.reference)}}
    start = time.perf_counter()
    for it in range(args.meta_iters):
        rng = np.random.RandomState([args.seed, it])
        tasks = [train_split.task(rng, args.classes, args.shots, args.train_queries) for _ in range(args.meta_batch)]
        loss = learner.meta_step(tasks, args.steps)
        if (it + 1) % 100 == 0:
            print(f"iteration {it + 1}/{args.meta_iters}: query loss {loss:.4f}", file=sys.stderr, flush=True)
    result["train_seconds"] = time.perf_counter() - start
    result["correct"], result["eval_seconds"] = {}, {}
    for mode in MODES:
        start = time.perf_counter()
        result["correct"][mode] = score(learner, test_split, args, mode)
        result["eval_seconds"][mode] = time.perf_counter() - start
    write_result(result, args.out, queries_per_task=args.classes * args.queries)


if __name__ == "__main__":
    main()
