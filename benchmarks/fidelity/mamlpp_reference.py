"""Train and score HowToTrainYourMAMLPytorch's own MAML++ on gbml's prepared Omniglot arrays.

The reference runs unmodified from a checkout (``--reference``): its argument handling
(``utils.parser_utils.get_args`` reading the released ``experiment_config/*.json`` of the cell),
its ``MAMLFewShotClassifier`` (network, LSLR inner loop, MSL, per-step BN, cosine annealing) and
its ``run_train_iter`` / ``run_validation_iter`` do all the work. Only the data provider is
replaced (the reference's ``data.py`` needs torchvision): tasks are drawn the way its
``get_set`` draws them (``data.py``: distinct classes, one 0/90/180/270-degree ``np.rot90`` per
class on the training split only, support and targets without replacement) from the prepared
arrays, so both implementations see identical pixels: the reference loads Omniglot's 1-bit PNGs
with Pillow, whose resize of a mode-"1" image is nearest-neighbour whatever the filter, values 0/1
-- what ``prepare.omniglot.resample: nearest`` gives.

Three things are the study's, not the reference's, and apply to both sides alike:
* the budget: the config's 100 epochs are kept and each is ``meta_iters / 100`` iterations, so
  MSL, cosine annealing and derivative-order annealing keep their shape over the shorter run;
* the torch seed: the released configs never set ``seed``, so every released run initialises
  from the parser's default (104); here ``--seed`` sets it, so seeds differ in initialisation;
* evaluation: the final model (the reference ensembles its top-5 validation checkpoints) on
  ``--eval-samples`` test tasks per mode. Transductive is the reference's own protocol (its batch
  norm always normalises with the batch's statistics); for the non-transductive mode each query
  is a target set of its own, the support set plus that query, scored by ``run_validation_iter``
  like any other target set -- the protocol ``gbml evaluate`` and supervised-reptile use.

    python benchmarks/fidelity/mamlpp_reference.py --reference PATH --prepared DIR \\
        --seed 0 --out result.json [--meta-iters 2000 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from reference_result import write_result   # beside this script, on sys.path when it runs

MODES = ("transductive", "non_transductive")
ROTATIONS = 4


def import_reference(checkout: Path):
    """(MAMLFewShotClassifier, get_args) from a checkout of HowToTrainYourMAMLPytorch."""
    if not (checkout / "few_shot_learning_system.py").is_file():
        sys.exit(f"{checkout} is not a checkout of AntreasAntoniou/HowToTrainYourMAMLPytorch (no "
                 "few_shot_learning_system.py); clone https://github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch "
                 "and pass its path with --reference")
    sys.path.insert(0, str(checkout))
    from few_shot_learning_system import MAMLFewShotClassifier
    from utils.parser_utils import get_args
    return MAMLFewShotClassifier, get_args


def reference_args(get_args, config: Path, seed: int, meta_iters: int):
    """The reference's own ``get_args`` on the released config, then the study's budget and seed."""
    argv, sys.argv = sys.argv, [sys.argv[0], "--name_of_args_json_file", str(config)]
    os.environ.setdefault("DATASET_DIR", tempfile.gettempdir())    # get_args joins it to dataset_path
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            args, device = get_args()
    finally:
        sys.argv = argv
    if meta_iters % args.total_epochs:
        sys.exit(f"--meta-iters must be a multiple of the config's total_epochs ({args.total_epochs})")
    args.total_iter_per_epoch = meta_iters // args.total_epochs
    args.seed = seed
    return args, device


class Split:
    """One prepared split as the reference's data provider holds it: per class an array of its
    images [20, 28, 28, 1] in {0, 1}; ``augment`` (training) rotates each task's classes."""

    def __init__(self, prepared: Path, split: str, augment: bool):
        from gbml.data.prepared import load_split, read_manifest
        images = load_split(prepared, split).images.numpy().astype(np.float32) / 255.0   # [C, 20, 1, H, W]
        if split in read_manifest(prepared).get("rotate_splits", []):
            images = images[::ROTATIONS]          # class 4c + 0: the unrotated character; rotations are drawn here
        self.images = np.ascontiguousarray(images.transpose(0, 1, 3, 4, 2))          # [C, 20, H, W, 1]
        self.augment = augment

    def task(self, rng: np.random.RandomState, ways: int, shots: int, targets: int):
        """One task as ``data.py``'s ``get_set`` draws it: support [N, K, 1, H, W], targets
        [N, T, 1, H, W] and their labels [N, K], [N, T]."""
        classes = rng.choice(len(self.images), size=ways, replace=False)
        rng.shuffle(classes)
        rotations = rng.randint(0, ROTATIONS, size=ways)
        x = []
        for c, k in zip(classes, rotations):
            picks = rng.choice(self.images.shape[1], size=shots + targets, replace=False)
            class_images = self.images[c, picks]
            if self.augment:
                class_images = np.rot90(class_images, k=k, axes=(1, 2))
            x.append(class_images.transpose(0, 3, 1, 2))
        x = np.stack(x).astype(np.float32)
        y = np.repeat(np.arange(ways, dtype=np.float32)[:, None], shots + targets, axis=1)
        return x[:, :shots], x[:, shots:], y[:, :shots], y[:, shots:]


def batch(tasks):
    """Stack tasks into the reference's data_batch (support x, target x, support y, target y)."""
    return tuple(np.stack([t[i] for t in tasks]) for i in range(4))


def train(model, split: Split, args, seed: int, meta_iters: int, log) -> None:
    for it in range(meta_iters):
        # Each task batch from its own seed, as the reference seeds each get_set call.
        rng = np.random.RandomState([seed, it])
        tasks = [split.task(rng, args.num_classes_per_set, args.num_samples_per_class, args.num_target_samples)
                 for _ in range(args.batch_size)]
        losses, _ = model.run_train_iter(batch(tasks), epoch=it / args.total_iter_per_epoch)
        if (it + 1) % 100 == 0:
            log(f"iteration {it + 1}/{meta_iters}: loss {float(losses['loss']):.4f}, "
                f"accuracy {float(losses['accuracy']):.3f}")


def non_transductive(task):
    """The task as one target set per query: the support set plus that query (labels likewise)."""
    xs, xt, ys, yt = task
    ways, shots = ys.shape
    support_x = xs.reshape(ways * shots, *xs.shape[2:])
    out = []
    for x, y in zip(xt.reshape(-1, *xt.shape[2:]), yt.reshape(-1)):
        out.append((xs, np.concatenate([support_x, x[None]])[None], ys,
                    np.concatenate([ys.reshape(-1), [y]])[None].astype(np.float32)))
    return out


def score(model, split: Split, args, eval_seed: int, tasks: int, shots: int, queries: int, mode: str,
          chunk: int = 8) -> list[int]:
    """Per-task correct counts from ``run_validation_iter`` on ``tasks`` test tasks."""
    correct = []
    ways = args.num_classes_per_set
    for start in range(0, tasks, chunk):
        drawn = [split.task(np.random.RandomState([eval_seed, i]), ways, shots, queries)
                 for i in range(start, min(start + chunk, tasks))]
        if mode == "transductive":
            _, preds = model.run_validation_iter(batch(drawn))
            correct += [int((p.argmax(1) == t[3].reshape(-1)).sum()) for p, t in zip(preds, drawn)]
        else:
            for task in drawn:
                sets = non_transductive(task)
                _, preds = model.run_validation_iter(batch(sets))
                correct.append(int(sum(p[-1].argmax() == s[3][0, -1] for p, s in zip(preds, sets))))
    return correct


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="checkout of HowToTrainYourMAMLPytorch")
    p.add_argument("--prepared", type=Path, required=True, help="gbml's data/prepared/omniglot")
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    p.add_argument("--seed", type=int, default=0, help="torch initialisation seed and training-task seed")
    p.add_argument("--eval-seed", type=int, default=1234, help="test task i is drawn from (eval-seed, i)")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=1, help="test targets per class")
    p.add_argument("--meta-iters", type=int, default=2000, help="a multiple of the config's 100 epochs")
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")        # its scheduler.step(epoch) and get_lr() are deprecated
    MAMLFewShotClassifier, get_args = import_reference(args.reference.resolve())
    config = (args.reference / "experiment_config" /
              f"omniglot_maml++-omniglot_{args.shots}_8_0.1_64_{args.classes}_0.json")
    if not config.is_file():
        sys.exit(f"no released config {config.name} in {args.reference / 'experiment_config'}")
    ref_args, device = reference_args(get_args, config, args.seed, args.meta_iters)
    train_split = Split(args.prepared, "train", augment=True)
    test_split = Split(args.prepared, "test", augment=False)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with contextlib.redirect_stdout(io.StringIO()):      # it prints every parameter it builds
        model = MAMLFewShotClassifier(im_shape=(2, 1, 28, 28), device=device, args=ref_args)
    result = {"implementation": "HowToTrainYourMAMLPytorch", "config": config.name,
              "settings": vars(args) | {"reference": str(args.reference), "prepared": str(args.prepared),
                                        "out": str(args.out)},
              "reference_args": {k: v for k, v in vars(ref_args).items() if isinstance(v, (int, float, str, bool))}}
    start = time.perf_counter()
    train(model, train_split, ref_args, args.seed, args.meta_iters, log)
    result["train_seconds"] = time.perf_counter() - start
    result["correct"], result["eval_seconds"] = {}, {}
    for mode in MODES:
        start = time.perf_counter()
        result["correct"][mode] = score(model, test_split, ref_args, args.eval_seed, args.eval_samples,
                                        args.shots, args.queries, mode)
        result["eval_seconds"][mode] = time.perf_counter() - start
        log(f"{mode}: {np.mean(result['correct'][mode]) / (args.classes * args.queries):.4f}")
    write_result(result, args.out, queries_per_task=args.classes * args.queries)


if __name__ == "__main__":
    main()
