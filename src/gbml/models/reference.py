"""Conventions of the reference implementations that Conv4's switches (``gbml.models.conv4``)
reproduce: TensorFlow's batch-norm epsilon and ``'same'`` padding, the initialisations, ImageNet's
input statistics; and each switch's values and default (what a params file that leaves it out
gets). The initialisations:

* ``init="glorot"``: Glorot-uniform kernels and zero biases, ``tf.layers``' defaults. PyTorch's
  default (Kaiming-uniform with a=sqrt(5), uniform biases) starts the head about 2.4x smaller.
* ``init="finn"``: Finn et al.'s Omniglot network (cbfinn/maml ``maml.py``): Glorot-uniform
  convolutions (``xavier_initializer_conv2d``), zero biases, and an N(0, 1) head.
* ``init="learn2learn"``: learn2learn's ``OmniglotCNN`` (``vision/models/cnn4.py``): as "finn",
  and batch-norm weights drawn from U(0, 1) (``torch.nn.init.uniform_``) instead of ones.
"""

from __future__ import annotations

from torch import nn

# TensorFlow's batch-norm epsilon, used by both reference implementations (PyTorch's is 1e-5).
BN_EPS = 1e-3
INITS = ("torch", "glorot", "finn", "learn2learn")
ACTIVATIONS = ("relu", "leaky_relu")
PADDINGS = ("symmetric", "tensorflow")
NORMALIZATIONS = ("none", "imagenet")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def same_padding(size: int, stride: int, kernel: int = 3) -> tuple[int, int]:
    """TensorFlow's ``'same'`` padding of one axis, (before, after): the output has
    ceil(size / stride) positions and the odd padding goes after (bottom, right)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def reference_init_(module: nn.Module, init: str) -> None:
    """``init`` "glorot": ``tf.layers``' defaults, Glorot-uniform weights for convolutions and
    linear layers (fans counting the receptive field, as TensorFlow does) and zero biases;
    "finn": the same but N(0, 1) linear weights; "learn2learn": "finn" and U(0, 1) batch-norm
    weights. Otherwise batch norm is untouched."""
    from gbml.models.conv4 import GroupBatchNorm   # here, not above: conv4 imports this module

    for m in module.modules():
        if isinstance(m, GroupBatchNorm) and init == "learn2learn" and isinstance(m.weight, nn.Parameter):
            nn.init.uniform_(m.weight)
        elif isinstance(m, nn.Linear) and init in ("finn", "learn2learn"):
            nn.init.normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def switch_defaults() -> dict:
    """Conv4's keyword defaults (init, padding, ...): what a params file that leaves a switch out
    gets, e.g. for the report's protocol tables and for checking runs trained before a switch."""
    import inspect
    from gbml.models.conv4 import Conv4   # here, not above: conv4 imports this module
    return {name: p.default for name, p in inspect.signature(Conv4).parameters.items()
            if p.default is not inspect.Parameter.empty}
