"""The fully connected regressor of the sine-wave experiments.

Nichol et al. (2018), Figure 1, use a 1-64-64-1 MLP; their companion PyTorch demo (the
``reptile-sinewaves-demo.py`` gist linked from OpenAI's Reptile post) uses tanh and notes that it
"gives slightly better results" than the ReLU of the paper. Finn et al. (2017), section 5.1, use
two hidden layers of 40 ReLU units. Width, depth and activation are parameters so both setups can
be run; the default is Nichol et al.'s 1-64-64-1 with tanh. Weights keep PyTorch's default
initialisation, as in the demo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class MLP(nn.Module):
    """``in_features -> hidden (x depth) -> out_features``, an activation after each hidden layer.

    Inputs are ``[n, in_features]`` (any leading batch axes work), outputs ``[n, out_features]``.
    """

    def __init__(self, in_features: int = 1, out_features: int = 1, hidden: int = 64, depth: int = 2,
                 activation: str = "tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if hidden < 1 or depth < 1:
            raise ValueError(f"need hidden >= 1 and depth >= 1, got hidden={hidden}, depth={depth}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_tasks(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Outputs of many tasks at once, each under its own parameters (``named_parameters()``
        with a leading task axis ``T``): ``x`` is ``[T, n, in_features]``, the result
        ``[T, n, out_features]``; each linear layer is one batched matrix product (for one task, the
        plain linear layer: ``forward``'s floats bit for bit)."""
        h = x
        for i, layer in enumerate(self.net):
            if not isinstance(layer, nn.Linear):
                h = layer(h)
                continue
            weight, bias = params[f"net.{i}.weight"], params[f"net.{i}.bias"]
            if len(h) == 1:
                h = F.linear(h[0], weight[0], bias[0]).unsqueeze(0)
            else:
                h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        return h
