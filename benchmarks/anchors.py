"""Anchors for ``benchmarks/compare.py``: the established meta-learning libraries' training and
evaluation steps, written the way each library's own examples use them, so that gbml's engine can
be timed against them.

Runs only in ``.venv-bench/``, built by ``benchmarks/setup_anchors.sh`` (learn2learn 0.2.0,
higher 0.2.1, CPU torch 2.13.0). Only torch is imported at module level; the libraries are
imported inside the functions that use them.

Each ``*_step`` factory builds the model, optimiser and data up front and returns a
zero-argument ``step()`` doing one complete unit of work; the caller times ``step()``. Data are
random images: throughput does not depend on pixel values. All randomness comes from a
``torch.Generator`` seeded with ``seed``.

The model is ``conv4``, the same network as ``gbml.models.conv4.Conv4`` (flatten head, batch
norm with batch statistics only and TensorFlow's epsilon), so timings compare like with like.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# TensorFlow's batch-norm epsilon, as in gbml's Conv4 and the reference implementations.
BN_EPS = 1e-3
# At most this many distinct tasks are generated; longer loops cycle through them. 600
# Mini-ImageNet test tasks would otherwise need ~5 GB of random pixels for no benefit.
TASK_POOL = 32

_torchvision_fragment = None  # keeps the op schemas declared by import_learn2learn() alive


def import_learn2learn():
    """Import and return learn2learn.

    learn2learn imports torchvision, whose only wheel for torch 2.13 is a CUDA build. Beside CPU
    torch its compiled ops fail to load, and its Python side then registers fake kernels for
    ``torchvision::nms`` and ``torchvision::qnms``, which fails unless those ops exist. Declaring
    the two schemas first (with no kernels; the benchmarks never call them) lets it import.
    """
    global _torchvision_fragment
    schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    for op in ("nms", "qnms"):
        if not hasattr(torch.ops.torchvision, op):
            if _torchvision_fragment is None:
                _torchvision_fragment = torch.library.Library("torchvision", "FRAGMENT")
            _torchvision_fragment.define(op + schema)
    import learn2learn

    return learn2learn


def conv4(ways: int, in_channels: int, image_size: int, hidden: int,
          downsample: str) -> nn.Sequential:
    """gbml's Conv4 as a plain ``nn.Sequential`` (which both libraries can patch).

    Omniglot: ``conv4(ways, 1, 28, 64, "stride")``;
    Mini-ImageNet: ``conv4(ways, 3, 84, 32, "maxpool")``.
    """
    if downsample not in ("stride", "maxpool"):
        raise ValueError(f"downsample must be 'stride' or 'maxpool', got {downsample!r}")
    layers, channels, side = [], in_channels, image_size
    for _ in range(4):
        layers += [
            nn.Conv2d(channels, hidden, 3, stride=2 if downsample == "stride" else 1, padding=1),
            nn.BatchNorm2d(hidden, eps=BN_EPS, track_running_stats=False),
            nn.ReLU(),
        ]
        if downsample == "maxpool":
            layers.append(nn.MaxPool2d(2))
        channels = hidden
        side = (side + 1) // 2 if downsample == "stride" else side // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(hidden * side * side, ways))


def _seeded_conv4(gen: torch.Generator, *args, device: str = "cpu") -> nn.Sequential:
    # nn.Module initialisers draw from the global RNG: seed it from ``gen`` inside fork_rng so the
    # caller's global RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
        return conv4(*args).to(device)


def _tasks(n: int, *, ways: int, shots: int, queries: int, in_channels: int, image_size: int,
           gen: torch.Generator, device: str) -> list[tuple[torch.Tensor, ...]]:
    """``min(n, TASK_POOL)`` random tasks ``(x_support, y_support, x_query, y_query)``."""
    def images(count):
        return torch.rand(count, in_channels, image_size, image_size, generator=gen).to(device)

    def labels(per_class):
        return torch.arange(ways).repeat(per_class).to(device)

    return [(images(ways * shots), labels(shots), images(ways * queries), labels(queries))
            for _ in range(min(n, TASK_POOL))]


def _l2l_adapter(model: nn.Module, inner_steps: int, inner_lr: float, first_order: bool):
    """learn2learn's idiom: clone the MAML wrapper per task, ``adapt`` on the support loss."""
    maml = import_learn2learn().algorithms.MAML(model, lr=inner_lr, first_order=first_order)

    def run(xs, ys, then):
        learner = maml.clone()
        for _ in range(inner_steps):
            learner.adapt(F.cross_entropy(learner(xs), ys))
        return then(learner)

    return run


def _higher_adapter(model: nn.Module, inner_steps: int, inner_lr: float, track_higher_grads: bool):
    """higher's idiom: a functional copy of the model and a differentiable SGD per task; the
    query work ``then(adapted)`` runs inside the context, as in higher's examples."""
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)

    def run(xs, ys, then):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=track_higher_grads) as (fmodel, diffopt):
            for _ in range(inner_steps):
                diffopt.step(F.cross_entropy(fmodel(xs), ys))
            return then(fmodel)

    return run


def maml_step(library: str, *, ways: int, shots: int, queries: int, meta_batch: int,
              inner_steps: int, inner_lr: float, first_order: bool, in_channels: int,
              image_size: int, hidden: int, downsample: str, meta_lr: float = 1e-3,
              device: str = "cpu", seed: int = 0):
    """One (FO)MAML meta-iteration per ``step()``: adapt on each of ``meta_batch`` tasks,
    back-propagate its query loss / meta_batch, then one outer Adam step."""
    gen = torch.Generator().manual_seed(seed)
    model = _seeded_conv4(gen, ways, in_channels, image_size, hidden, downsample, device=device)
    tasks = _tasks(meta_batch, ways=ways, shots=shots, queries=queries, in_channels=in_channels,
                   image_size=image_size, gen=gen, device=device)
    params = list(model.parameters())
    if library == "learn2learn":
        adapt = _l2l_adapter(model, inner_steps, inner_lr, first_order)
    elif library == "higher":
        adapt = _higher_adapter(model, inner_steps, inner_lr, track_higher_grads=not first_order)
    else:
        raise ValueError(f"library must be 'learn2learn' or 'higher', got {library!r}")
    outer_opt = torch.optim.Adam(params, lr=meta_lr)

    def backward(adapted, xq, yq):
        loss = F.cross_entropy(adapted(xq), yq) / meta_batch
        if library == "higher" and first_order:
            # With track_higher_grads=False higher detaches the adapted weights, so backward()
            # would leave the model's .grad empty; the FOMAML gradient is the one w.r.t. the
            # adapted weights, added to the model's (as higher's maintainers suggest).
            for p, g in zip(params, torch.autograd.grad(loss, list(adapted.parameters()))):
                p.grad = g if p.grad is None else p.grad + g
        else:
            loss.backward()

    def step():
        outer_opt.zero_grad()
        for i in range(meta_batch):
            xs, ys, xq, yq = tasks[i % len(tasks)]
            adapt(xs, ys, lambda adapted: backward(adapted, xq, yq))
        outer_opt.step()

    step.model = model  # for parity checks against gbml
    return step


def _minibatches(n: int, batch: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """``[iters, batch]`` indices into ``n`` examples, taken in order from successive
    shuffles (a batch may straddle two shuffles), as the Reptile reference samples them."""
    shuffles = -(-batch * iters // n)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(shuffles)])
    return order[: batch * iters].view(iters, batch)


def reptile_step(*, ways: int, train_shots: int, inner_batch: int, inner_iters: int,
                 meta_batch: int, inner_lr: float = 1e-3, meta_step: float = 1.0,
                 in_channels: int = 1, image_size: int = 28, hidden: int = 64,
                 downsample: str = "stride", device: str = "cpu", seed: int = 0):
    """One Reptile meta-iteration per ``step()`` in plain PyTorch (Nichol et al.'s reference):
    train a copy of the weights on each task, then phi += meta_step * mean(W_i - phi)."""
    gen = torch.Generator().manual_seed(seed)
    model = _seeded_conv4(gen, ways, in_channels, image_size, hidden, downsample, device=device)
    tasks = [(xs, ys, _minibatches(len(xs), inner_batch, inner_iters, gen).to(device))
             for xs, ys, _, _ in _tasks(meta_batch, ways=ways, shots=train_shots, queries=0,
                                        in_channels=in_channels, image_size=image_size,
                                        gen=gen, device=device)]
    worker = copy.deepcopy(model)
    # One optimiser for all tasks: its moments carry over, as in the reference (beta1 = 0).
    inner_opt = torch.optim.Adam(worker.parameters(), lr=inner_lr, betas=(0.0, 0.999))

    def step():
        deltas = [torch.zeros_like(p) for p in model.parameters()]
        for i in range(meta_batch):
            xs, ys, batches = tasks[i % len(tasks)]
            worker.load_state_dict(model.state_dict())  # in place: Adam's state stays attached
            for idx in batches:
                inner_opt.zero_grad()
                F.cross_entropy(worker(xs[idx]), ys[idx]).backward()
                inner_opt.step()
            with torch.no_grad():
                for d, w, p in zip(deltas, worker.parameters(), model.parameters()):
                    d += w - p
        with torch.no_grad():
            for p, d in zip(model.parameters(), deltas):
                p += meta_step / meta_batch * d

    step.model = model  # for parity checks against gbml
    return step


def eval_step(library: str, mode: str, *, ways: int, shots: int, queries: int, tasks: int,
              inner_steps: int, inner_lr: float, in_channels: int, image_size: int, hidden: int,
              downsample: str, device: str = "cpu", seed: int = 0):
    """Evaluate ``tasks`` test tasks per ``step()``: adapt on the support set (first order),
    then classify the queries.

    mode "transductive": all queries in one forward pass (batch-norm statistics over the queries).
    mode "non_transductive": one forward pass per query on support + that query, keeping the
    query's row, so no query sees another. ``step()`` returns the mean query accuracy.
    """
    if mode not in ("transductive", "non_transductive"):
        raise ValueError(f"mode must be 'transductive' or 'non_transductive', got {mode!r}")
    gen = torch.Generator().manual_seed(seed)
    model = _seeded_conv4(gen, ways, in_channels, image_size, hidden, downsample, device=device)
    pool = _tasks(tasks, ways=ways, shots=shots, queries=queries, in_channels=in_channels,
                  image_size=image_size, gen=gen, device=device)
    if library == "learn2learn":
        adapt = _l2l_adapter(model, inner_steps, inner_lr, first_order=True)
    elif library == "higher":
        adapt = _higher_adapter(model, inner_steps, inner_lr, track_higher_grads=False)
    else:
        raise ValueError(f"library must be 'learn2learn' or 'higher', got {library!r}")

    def predict(adapted, xs, xq):
        with torch.no_grad():
            if mode == "transductive":
                return adapted(xq).argmax(1)
            rows = [adapted(torch.cat([xs, xq[j:j + 1]]))[-1] for j in range(len(xq))]
            return torch.stack(rows).argmax(1)

    def step():
        correct = 0.0
        for i in range(tasks):
            xs, ys, xq, yq = pool[i % len(pool)]
            pred = adapt(xs, ys, lambda adapted: predict(adapted, xs, xq))
            correct += (pred == yq).float().mean().item()
        return correct / tasks

    step.model = model  # for parity checks against gbml
    return step
