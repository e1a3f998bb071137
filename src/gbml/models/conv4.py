"""The four-block convolutional network of Finn et al. (2017), section 5.2.

Each block is a 3x3 convolution with ``hidden`` filters, batch norm and ReLU. For Omniglot the
blocks downsample with stride-2 convolutions (Finn et al.; Nichol et al.'s ``OmniglotModel``);
for Mini-ImageNet with 2x2 max-pooling. A linear head maps the flattened features to the
``ways`` logits.

Batch norm always normalises with the statistics of the batch it is given and keeps no running
statistics, as in both reference implementations. What "the batch" is decides whether an
evaluation is transductive, so the model accepts inputs with a leading *group* axis
``[groups, n, C, H, W]``: statistics are computed per group. That lets the non-transductive
protocol (support set plus one query per group) run as one forward pass.

With ``bn_steps > 0`` (MAML++'s per-step batch norm, Antoniou et al. 2019, section 4, "BNWB" and
"BNRS") each batch-norm layer holds one weight and bias per inner-loop step, shape
``[bn_steps, C]``, and per-step running statistics; ``forward(x, step=k)`` picks row ``k``.
Normalisation still uses the batch's statistics, as in the MAML++ reference code (its
``MetaBatchNormLayer`` calls ``F.batch_norm`` with ``training=True`` in every phase): the running
statistics are tracked in training mode (``model.train()``) on ungrouped inputs but never used
to normalise. The default ``bn_steps=0`` is the model above, unchanged, and ignores ``step``.

Switches reproduce the reference implementations' networks (Nichol et al.'s ``tf.layers`` models
in openai/supervised-reptile, ``supervised_reptile/models.py``; Finn et al.'s cbfinn/maml; the
MAML++ code); the defaults are PyTorch's and change nothing:

* ``init="glorot"``, ``"finn"``, ``"learn2learn"``: the reference implementations'
  initialisations (``gbml.models.reference``, which describes each).
* ``bn_scale=False``: batch norm with an offset only, ``tf.contrib.layers.batch_norm``'s default
  (``scale=False``) in Finn et al.'s code; the scale is a constant 1 (a buffer, not a parameter).
* ``bn_eps=1e-5``, ``activation="leaky_relu"``: the MAML++ reference's PyTorch network
  (HowToTrainYourMAMLPytorch ``meta_neural_network_architectures.py``: ``F.batch_norm``'s
  default epsilon, ``F.leaky_relu`` with slope 0.01).
* ``normalize="imagenet"``: inputs standardised with ImageNet's channel mean and std, as the
  MAML++ reference's Mini-ImageNet loader does (HowToTrainYourMAMLPytorch ``data.py``,
  ``transforms.Normalize`` on [0, 1] pixels); the default "none" feeds the pixels as they are.
* ``padding="tensorflow"``: TensorFlow's ``'same'`` padding, which puts the odd row and column of
  a stride-2 convolution at the bottom and right (PyTorch's ``padding=1`` pads both sides, so
  28 -> 14 samples a grid shifted by one pixel), and ``'same'`` 2x2 max-pooling (ceil: 21 -> 11).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gbml.models.reference import (ACTIVATIONS, BN_EPS, IMAGENET_MEAN, IMAGENET_STD, INITS, NORMALIZATIONS,
                                   PADDINGS, reference_init_, same_padding)


class GroupBatchNorm(nn.Module):
    """Batch norm over each group of a ``[groups, n, C, H, W]`` input, batch statistics only.

    With ``steps > 0``: per-step weights, biases and running statistics (see the module
    docstring); ``momentum`` is PyTorch's default, as in the MAML++ reference code. Without
    ``scale`` the weight is a constant buffer of ones (offset-only batch norm).
    """

    def __init__(self, channels: int, eps: float = BN_EPS, steps: int = 0, momentum: float = 0.1,
                 scale: bool = True):
        super().__init__()
        shape = (steps, channels) if steps else (channels,)
        if scale:
            self.weight = nn.Parameter(torch.ones(shape))
        else:
            self.register_buffer("weight", torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.eps = eps
        self.steps, self.momentum = steps, momentum
        if steps:
            self.register_buffer("running_mean", torch.zeros(steps, channels))
            self.register_buffer("running_var", torch.ones(steps, channels))

    def forward(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        groups, n, c, h, w = x.shape
        weight, bias, running_mean, running_var = self.weight, self.bias, None, None
        if self.steps:
            weight, bias = weight[step], bias[step]
            if self.training and groups == 1:
                # Rows of the buffers are views: F.batch_norm updates step ``step``'s in place.
                running_mean, running_var = self.running_mean[step], self.running_var[step]
        if groups == 1:  # the common case: skip the fold's copies
            return F.batch_norm(x[0], running_mean, running_var, weight, bias, training=True,
                                momentum=self.momentum, eps=self.eps).unsqueeze(0)
        # Fold the group axis into channels so one native batch-norm call computes per-group
        # statistics over (n, H, W). Grouped inputs are an evaluation device: no running stats.
        folded = x.transpose(0, 1).reshape(n, groups * c, h, w)
        out = F.batch_norm(
            folded, None, None, weight.repeat(groups), bias.repeat(groups),
            training=True, eps=self.eps,
        )
        return out.reshape(n, groups, c, h, w).transpose(0, 1)


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, downsample: str, bn_steps: int = 0, *,
                 padding: str = "symmetric", bn_scale: bool = True, bn_eps: float = BN_EPS,
                 activation: str = "relu"):
        super().__init__()
        stride = 2 if downsample == "stride" else 1
        self.tf_padding = padding == "tensorflow"
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=0 if self.tf_padding else 1)
        self.norm = GroupBatchNorm(out_channels, eps=bn_eps, steps=bn_steps, scale=bn_scale)
        self.activate = F.leaky_relu if activation == "leaky_relu" else F.relu
        self.pool = downsample == "maxpool"

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded for the convolution: as given (``padding=1`` is the convolution's own) or
        with TensorFlow's 'same' padding, whose split depends on the input's size."""
        if not self.tf_padding:
            return x
        top, bottom = same_padding(x.shape[-2], self.conv.stride[0])
        left, right = same_padding(x.shape[-1], self.conv.stride[1])
        return F.pad(x, (left, right, top, bottom))

    def max_pool(self, x: torch.Tensor) -> torch.Tensor:
        # ceil_mode pads the odd row/column after, as TensorFlow's 'same' pooling does.
        return F.max_pool2d(x, 2, ceil_mode=self.tf_padding)

    def forward(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        groups, n = x.shape[:2]
        y = self.conv(self.pad(x.flatten(0, 1)))
        y = self.activate(self.norm(y.unflatten(0, (groups, n)), step))
        if self.pool:
            y = self.max_pool(y.flatten(0, 1)).unflatten(0, (groups, n))
        return y


class Conv4(nn.Module):
    """Conv4 backbone plus linear head.

    Args:
        ways: number of output classes.
        in_channels: 1 for Omniglot, 3 for Mini-ImageNet.
        image_size: input height = width, used to size the head.
        hidden: filters per block (64 for Omniglot; 32 in MAML's Mini-ImageNet setup).
        downsample: "stride" (Omniglot) or "maxpool" (Mini-ImageNet).
        head: "flatten" (Nichol et al.) or "mean" (Finn et al.'s Omniglot code averages the last
            feature map spatially before the linear layer).
        bn_steps: 0 (shared batch norm) or the number of inner-loop steps for MAML++'s per-step
            batch norm; ``forward``'s ``step`` then selects the step's parameters and statistics.
        init: "torch" (PyTorch's default initialisation), "glorot" (``tf.layers``' defaults) or
            "finn" (Glorot convolutions, N(0, 1) head).
        padding: "symmetric" (PyTorch's) or "tensorflow" ('same'; see the module docstring).
        bn_scale: False for offset-only batch norm (Finn et al.'s code).
        bn_eps: batch norm's epsilon (TensorFlow's 1e-3; PyTorch's 1e-5 in the MAML++ reference).
        activation: "relu" or "leaky_relu" (slope 0.01, the MAML++ reference).
        normalize: "none" or "imagenet" (3-channel input standardised with ImageNet's statistics).
    """

    def __init__(self, ways: int, in_channels: int = 1, image_size: int = 28, hidden: int = 64,
                 downsample: str = "stride", head: str = "flatten", bn_steps: int = 0,
                 init: str = "torch", padding: str = "symmetric", bn_scale: bool = True,
                 bn_eps: float = BN_EPS, activation: str = "relu", normalize: str = "none"):
        super().__init__()
        for name, value, allowed in (("downsample", downsample, ("stride", "maxpool")),
                                     ("head", head, ("flatten", "mean")), ("init", init, INITS),
                                     ("padding", padding, PADDINGS), ("activation", activation, ACTIVATIONS),
                                     ("normalize", normalize, NORMALIZATIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if normalize == "imagenet" and in_channels != 3:
            raise ValueError(f"normalize='imagenet' needs 3 input channels, got {in_channels}")
        self.input_stats = None
        if normalize == "imagenet":   # not buffers: the default model's state_dict stays as it was
            self.input_stats = (torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1))
        if bn_steps < 0 or not bn_eps > 0:
            raise ValueError(f"need bn_steps >= 0 and bn_eps > 0, got {bn_steps} and {bn_eps}")
        channels = [in_channels] + [hidden] * 4
        self.bn_steps = bn_steps
        self.blocks = nn.Sequential(
            *[ConvBlock(channels[i], channels[i + 1], downsample, bn_steps, padding=padding, bn_scale=bn_scale,
                        bn_eps=bn_eps, activation=activation) for i in range(4)]
        )
        self.head_pool = head
        side = image_size
        for _ in range(4):
            # Stride 2 and 'same' pooling round up; PyTorch's pooling rounds down.
            side = (side + 1) // 2 if downsample == "stride" or padding == "tensorflow" else side // 2
        features = hidden if head == "mean" else hidden * side * side
        self.classifier = nn.Linear(features, ways)
        if init != "torch":
            reference_init_(self, init)

    def features(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        """Features of ``x`` ([n, C, H, W] or grouped [g, n, C, H, W]), before the head;
        ``step`` selects the per-step batch norm (ignored when ``bn_steps == 0``)."""
        grouped = x.dim() == 5
        h = self.standardise(x if grouped else x.unsqueeze(0))
        for block in self.blocks:
            h = block(h, step)
        h = h.mean(dim=(-2, -1)) if self.head_pool == "mean" else h.flatten(2)
        return h if grouped else h.squeeze(0)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ([..., C, H, W]) standardised per channel when ``normalize`` asks for it."""
        if self.input_stats is None:
            return x
        mean, std = (t.to(x.device, x.dtype) for t in self.input_stats)
        return (x - mean) / std

    def forward(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        return self.classifier(self.features(x, step))

    def forward_tasks(self, params: dict[str, torch.Tensor], x: torch.Tensor, step: int = 0) -> torch.Tensor:
        """Logits of many tasks at once, each under its own parameters: ``params`` as
        ``named_parameters()`` with a leading task axis ``T``; ``x`` is ``[T, n, C, H, W]``, or
        ``[T, g, n, C, H, W]`` with batch-norm statistics per group (as ``forward``'s grouped
        input). Returns ``[T, n, ways]`` (``[T, g, n, ways]``), equal to calling ``forward`` task
        by task.

        The task (and group) axis is folded into the channels, ``[n, T*C, H, W]``, so each layer
        is ONE grouped convolution (``groups=T``) and one batch-norm call whose per-channel
        statistics are per task: no copies between layers, and plain autograd differentiates it
        exactly (the engine's formulation, ``gbml.algorithms.core``; ``vmap`` would copy
        activations at every layer, see reports/benchmarks/). A single ungrouped task (``T = 1``)
        runs exactly the kernels ``forward`` runs, so it gives ``forward``'s floats bit for bit.
        """
        x = self.standardise(x)
        tasks, n, (c, height, width) = x.shape[0], x.shape[-4], x.shape[-3:]
        groups = math.prod(x.shape[1:-4])                 # per task: 1, or g for a grouped input
        t = tasks * groups
        # Parameters per (task, group): repeat each task's tensors over its groups.
        p = {k: v.repeat_interleave(groups, dim=0) if groups > 1 else v for k, v in params.items()}
        h = x.reshape(t, n, c, height, width).transpose(0, 1).reshape(n, t * c, height, width)
        for i, block in enumerate(self.blocks):
            name = f"blocks.{i}"
            weight = p[f"{name}.conv.weight"]
            h = F.conv2d(block.pad(h), weight.flatten(0, 1), p[f"{name}.conv.bias"].flatten(), block.conv.stride,
                         block.conv.padding, groups=t)
            # Offset-only batch norm: the constant scale is a buffer, the same for every task.
            gamma = p.get(f"{name}.norm.weight", block.norm.weight.expand(t, *block.norm.weight.shape))
            beta = p[f"{name}.norm.bias"]
            if self.bn_steps:
                gamma, beta = gamma[:, step], beta[:, step]
            h = block.activate(F.batch_norm(h, None, None, gamma.flatten(), beta.flatten(), training=True,
                                            eps=block.norm.eps))
            if block.pool:
                h = block.max_pool(h)
        h = h.unflatten(1, (t, -1))                        # [n, t, hidden, h', w']
        h = h.mean(dim=(-2, -1)) if self.head_pool == "mean" else h.flatten(2)
        if t == 1:   # one task: the plain linear layer, so a stack of one computes what ``forward`` does
            logits = F.linear(h[:, 0], p["classifier.weight"][0], p["classifier.bias"][0]).unsqueeze(0)
        else:
            logits = torch.einsum("ntf,tkf->tnk", h, p["classifier.weight"]) + p["classifier.bias"].unsqueeze(1)
        return logits.reshape(*x.shape[:-4], n, -1)
