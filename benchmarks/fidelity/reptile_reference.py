"""Train and score openai/supervised-reptile's own code on gbml's prepared Omniglot arrays.

The reference runs unmodified: its TF1 graph code is imported from a checkout (``--reference``)
with ``import tensorflow`` resolved to ``tensorflow.compat.v1`` (v2 behaviour off, legacy
``tf.layers`` from tf_keras), and its ``Reptile.train_step`` / ``Reptile.evaluate`` /
``supervised_reptile.train.train`` do all the work. Only the data loading is replaced: the
reference reads PNGs from ``data/omniglot``; here ``Character`` objects serve the same images
from the prepared split, drawing examples with the same ``random.shuffle`` the reference's
``Character.sample`` uses, so both implementations see identical pixels.

Runs in the fidelity environment (``benchmarks/fidelity/setup.sh``). Writes one JSON file: the
settings, per-task correct counts per evaluation mode, and wall times.

    python benchmarks/fidelity/reptile_reference.py --reference PATH --prepared DIR \\
        --seed 0 --out result.json [--meta-iters 3000 ...]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reference_result import write_result   # beside this script, on sys.path when it runs

MODES = ("transductive", "non_transductive")


def import_reference(checkout: Path):
    """supervised_reptile from ``checkout``, its ``tensorflow`` being TF1 through compat.v1."""
    if not (checkout / "supervised_reptile" / "reptile.py").is_file():
        sys.exit(f"{checkout} is not a checkout of openai/supervised-reptile (no supervised_reptile/reptile.py); "
                 "clone https://github.com/openai/supervised-reptile and pass its path with --reference")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")      # tf.layers needs Keras 2 (tf_keras)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow.compat.v1 as tf
    tf.disable_v2_behavior()
    sys.modules["tensorflow"] = tf
    sys.path.insert(0, str(checkout))
    import supervised_reptile.eval  # noqa: F401  (imports models, reptile, train, variables)
    import supervised_reptile.models
    import supervised_reptile.reptile
    import supervised_reptile.train
    return tf, supervised_reptile


class Character:
    """The reference's ``omniglot.Character`` over an array of one class's images: ``sample(n)``
    shuffles the class's examples with ``random.shuffle`` and returns the first ``n``, as the
    reference does with the class's PNG file names."""

    def __init__(self, images: np.ndarray):
        self.images = images            # [20, 28, 28] float32 in [0, 1]

    def sample(self, num_images: int) -> list[np.ndarray]:
        order = list(range(len(self.images)))
        random.shuffle(order)
        return [self.images[i] for i in order[:num_images]]


def characters(prepared: Path, split: str) -> list[Character]:
    """The prepared split as Characters, rotations (class 4c + k) included where prepared so."""
    from gbml.data.prepared import load_split
    images = load_split(prepared, split).images.squeeze(2).numpy().astype(np.float32) / 255.0
    return [Character(c) for c in images]


def score(tf, sr, sess, model, dataset, args, transductive: bool) -> list[int]:
    """Per-task correct counts from the reference's ``Reptile.evaluate`` (what its
    ``eval.evaluate`` sums), each task restoring the full state (weights and Adam's slots)."""
    from supervised_reptile.variables import weight_decay
    reptile = sr.reptile.Reptile(sess, transductive=transductive, pre_step_op=weight_decay(1))
    return [int(reptile.evaluate(dataset, model.input_ph, model.label_ph, model.minimize_op, model.predictions,
                                 num_classes=args.classes, num_shots=args.shots,
                                 inner_batch_size=args.eval_batch, inner_iters=args.eval_iters,
                                 replacement=False))
            for _ in range(args.eval_samples)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="checkout of openai/supervised-reptile")
    p.add_argument("--prepared", type=Path, required=True, help="gbml's data/prepared/omniglot")
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=1234, help="seeds Python's random before each evaluation mode")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--train-shots", type=int, default=10)
    p.add_argument("--inner-batch", type=int, default=10)
    p.add_argument("--inner-iters", type=int, default=5)
    p.add_argument("--learning-rate", type=float, default=0.001)
    p.add_argument("--meta-step", type=float, default=1.0)
    p.add_argument("--meta-step-final", type=float, default=0.0)
    p.add_argument("--meta-batch", type=int, default=5)
    p.add_argument("--meta-iters", type=int, default=3000)
    p.add_argument("--eval-batch", type=int, default=5)
    p.add_argument("--eval-iters", type=int, default=50)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="TensorFlow intra- and inter-op threads")
    args = p.parse_args(argv)

    tf, sr = import_reference(args.reference.resolve())
    train_set, test_set = characters(args.prepared, "train"), characters(args.prepared, "test")
    random.seed(args.seed)
    np.random.seed(args.seed)
    tf.set_random_seed(args.seed)
    model = sr.models.OmniglotModel(args.classes, learning_rate=args.learning_rate)
    config = tf.ConfigProto(intra_op_parallelism_threads=args.threads, inter_op_parallelism_threads=args.threads)
    result = {"implementation": "supervised-reptile", "settings": vars(args) | {
        "reference": str(args.reference), "prepared": str(args.prepared), "out": str(args.out)}}
    with tf.Session(config=config) as sess, tempfile.TemporaryDirectory() as ckpt:
        start = time.perf_counter()
        # The reference's own training loop; eval_interval = meta_iters keeps its periodic
        # 2-task evaluations (which restore the state they alter) to iteration 0.
        sr.train.train(sess, model, train_set, test_set, ckpt, num_classes=args.classes, num_shots=args.shots,
                       train_shots=args.train_shots, inner_batch_size=args.inner_batch,
                       inner_iters=args.inner_iters, meta_step_size=args.meta_step,
                       meta_step_size_final=args.meta_step_final, meta_batch_size=args.meta_batch,
                       meta_iters=args.meta_iters, eval_inner_batch_size=args.eval_batch,
                       eval_inner_iters=args.eval_iters, eval_interval=args.meta_iters, log_fn=lambda *_: None)
        result["train_seconds"] = time.perf_counter() - start
        result["correct"], result["eval_seconds"] = {}, {}
        for mode in MODES:
            random.seed(args.eval_seed)       # both modes score the same tasks
            start = time.perf_counter()
            result["correct"][mode] = score(tf, sr, sess, model, test_set, args, mode == "transductive")
            result["eval_seconds"][mode] = time.perf_counter() - start
    write_result(result, args.out, queries_per_task=args.classes)


if __name__ == "__main__":
    main()
