"""The switches that reproduce the reference implementations' choices, each checked against an
independent computation: TensorFlow's 'same' padding and pooling written out by hand, Glorot's
bound, and the summed inner loss as a rescaled learning rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gbml.algorithms.reptile import Reptile, ReptileConfig
from gbml.models.conv4 import Conv4, ConvBlock
from gbml.models.reference import same_padding
from helpers import flat, random_episode, tiny_model


@pytest.mark.parametrize("size, stride, expected", [
    (28, 2, (0, 1)), (14, 2, (0, 1)), (7, 2, (1, 1)), (4, 2, (0, 1)),   # the Omniglot net's four blocks
    (84, 1, (1, 1)), (5, 1, (1, 1)),
])
def test_same_padding_follows_tensorflows_rule(size, stride, expected):
    # TensorFlow: out = ceil(size / stride); total = max((out - 1) * stride + 3 - size, 0),
    # split with the odd pixel after.
    assert same_padding(size, stride) == expected


def hand_same_conv(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """A single-channel 3x3 'same' convolution (cross-correlation) written out by index, with
    zero padding placed as TensorFlow places it."""
    n = x.shape[0]
    out = -(-n // stride)
    before = max((out - 1) * stride + 3 - n, 0) // 2
    y = np.zeros((out, out))
    for i in range(out):
        for j in range(out):
            for a in range(3):
                for b in range(3):
                    r, c = i * stride + a - before, j * stride + b - before
                    if 0 <= r < n and 0 <= c < n:
                        y[i, j] += w[a, b] * x[r, c]
    return y


@pytest.mark.parametrize("size", [28, 7, 6])
def test_tensorflow_padding_convolution_matches_a_hand_computed_same_convolution(size):
    block = ConvBlock(1, 1, "stride", padding="tensorflow").double()
    torch.nn.init.zeros_(block.conv.bias)
    x = torch.rand(1, 1, size, size, dtype=torch.float64)
    got = block.conv(block.pad(x))[0, 0].detach().numpy()
    expected = hand_same_conv(x[0, 0].numpy(), block.conv.weight[0, 0].detach().numpy(), 2)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_symmetric_padding_differs_from_tensorflows_on_even_inputs():
    # The reason for the switch: on 28x28 the two sample grids are one pixel apart.
    block = ConvBlock(1, 1, "stride").double()
    x = torch.rand(1, 1, 28, 28, dtype=torch.float64)
    expected = hand_same_conv(x[0, 0].numpy(), block.conv.weight[0, 0].detach().numpy(), 2)
    got = (block.conv(x) - block.conv.bias)[0, 0].detach().numpy()
    assert not np.allclose(got, expected)


def test_tensorflow_padding_pools_with_ceiling_like_same_max_pooling():
    block = ConvBlock(1, 1, "maxpool", padding="tensorflow")
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    pooled = block.max_pool(x)[0, 0]
    # 'same' 2x2 pooling of 5x5: 3x3 windows, the last row and column over one pixel each.
    expected = torch.tensor([[6.0, 8.0, 9.0], [16.0, 18.0, 19.0], [21.0, 23.0, 24.0]])
    torch.testing.assert_close(pooled, expected)


@pytest.mark.parametrize("kwargs, features", [
    (dict(), 64 * 2 * 2),                                                    # Omniglot 28: 14, 7, 4, 2
    (dict(padding="tensorflow"), 64 * 2 * 2),
    (dict(in_channels=3, image_size=84, hidden=32, downsample="maxpool"), 32 * 5 * 5),    # 42, 21, 10, 5
    (dict(in_channels=3, image_size=84, hidden=32, downsample="maxpool", padding="tensorflow"),
     32 * 6 * 6),                                                            # 42, 21, 11, 6 as tf.layers
])
def test_head_is_sized_for_the_feature_map_the_padding_produces(kwargs, features):
    model = Conv4(ways=5, **kwargs)
    assert model.classifier.in_features == features
    x = torch.rand(2, model.blocks[0].conv.in_channels, model_side(kwargs), model_side(kwargs))
    assert model(x).shape == (2, 5)


def model_side(kwargs):
    return kwargs.get("image_size", 28)


def test_glorot_init_draws_kernels_within_glorots_bound_and_zero_biases():
    torch.manual_seed(0)
    model = Conv4(ways=5, init="glorot")
    for name, p in model.named_parameters():
        if name.endswith("conv.weight") or name == "classifier.weight":
            fan_in = p.shape[1] * p[0, 0].numel()
            fan_out = p.shape[0] * p[0, 0].numel()
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert p.abs().max() <= bound
            # uniform(-b, b) has standard deviation b / sqrt(3)
            assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1), name
        elif name.endswith(("conv.bias", "classifier.bias", "norm.bias")):
            assert torch.count_nonzero(p) == 0, name
        else:
            assert torch.all(p == 1), name                                    # batch-norm scales


def test_glorot_head_starts_larger_than_torchs_default():
    # The finding behind the switch: tf.layers' dense kernel is ~2.4x torch's default.
    torch.manual_seed(0)
    ratio = Conv4(ways=5, init="glorot").classifier.weight.std() / Conv4(ways=5).classifier.weight.std()
    assert 2.0 < ratio < 2.8


def trained(inner_loss: str, lr: float, serial: bool) -> torch.Tensor:
    cfg = ReptileConfig(inner_optimizer="sgd", inner_lr=lr, inner_iters=3, inner_batch=4, inner_loss=inner_loss,
                        meta_batch=2, meta_step=0.5, meta_step_final=0.5, meta_iters=10,
                        inner_adam_state="fresh", serial=serial)
    algo = Reptile(tiny_model(), cfg, shots=2, seed=0)
    algo.meta_step([random_episode(shots=2, seed=1), random_episode(shots=2, seed=2)], iteration=0)
    return flat(p.detach() for p in algo.params.values())


@pytest.mark.parametrize("serial", [False, True])   # tasks side by side, or one by one (Algorithm 1)
def test_summed_inner_loss_is_the_mean_loss_with_a_batch_size_times_larger_sgd_step(serial):
    # d(sum)/dw = batch * d(mean)/dw, so SGD at lr on the sum = SGD at batch * lr on the mean.
    torch.testing.assert_close(trained("sum", 0.05, serial), trained("mean", 0.2, serial))
    assert not torch.allclose(trained("sum", 0.05, serial), trained("mean", 0.05, serial))


def test_finn_init_draws_an_n01_head_over_glorot_convolutions():
    torch.manual_seed(0)
    model = Conv4(ways=20, head="mean", init="finn")
    assert model.classifier.weight.std().item() == pytest.approx(1.0, rel=0.15)     # 64 x 20 draws
    assert torch.count_nonzero(model.classifier.bias) == 0
    conv = model.blocks[1].conv.weight
    assert conv.abs().max() <= math.sqrt(6 / (2 * 64 * 9))


def test_learn2learn_init_is_finns_with_batch_norm_weights_drawn_from_u01():
    torch.manual_seed(0)
    finn = Conv4(ways=5, head="mean", init="finn")
    torch.manual_seed(0)
    l2l = Conv4(ways=5, head="mean", init="learn2learn")
    scales = torch.cat([block.norm.weight.detach() for block in l2l.blocks])
    assert 0 <= scales.min() and scales.max() <= 1 and scales.std() > 0.2      # U(0, 1): std 0.29
    assert all(torch.equal(b.norm.weight, torch.ones(64)) for b in finn.blocks)
    assert l2l.classifier.weight.std().item() == pytest.approx(1.0, rel=0.3)
    assert l2l.blocks[1].conv.weight.abs().max() <= math.sqrt(6 / (2 * 64 * 9))


def test_offset_only_batch_norm_has_no_scale_parameter_and_normalises_to_the_offset():
    model = Conv4(ways=5, bn_scale=False).double()
    names = dict(model.named_parameters())
    assert "blocks.0.norm.weight" not in names and "blocks.0.norm.bias" in names
    block = model.blocks[0]
    with torch.no_grad():
        block.norm.bias.fill_(0.3)
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    y = block.conv(x)
    mean, var = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = ((y - mean) / torch.sqrt(var + 1e-3) + 0.3).relu()      # scale 1, TensorFlow's epsilon
    torch.testing.assert_close(block(x.unsqueeze(0))[0], expected)


def test_bn_eps_and_leaky_relu_are_the_ones_asked_for():
    block = ConvBlock(1, 2, "maxpool", bn_eps=1e-5, activation="leaky_relu").double()
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    y = block.conv(x)
    mean, var = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False, keepdim=True)
    z = (y - mean) / torch.sqrt(var + 1e-5)
    expected = torch.nn.functional.max_pool2d(torch.where(z > 0, z, 0.01 * z), 2)
    torch.testing.assert_close(block(x.unsqueeze(0))[0], expected)


def test_imagenet_normalisation_is_the_plain_network_on_standardised_pixels_in_both_forward_passes():
    torch.manual_seed(0)
    plain = Conv4(ways=5, in_channels=3, image_size=20, hidden=8, downsample="maxpool")
    normalised = Conv4(ways=5, in_channels=3, image_size=20, hidden=8, downsample="maxpool", normalize="imagenet")
    normalised.load_state_dict(plain.state_dict())         # no extra state: the statistics are constants
    x = torch.rand(2, 6, 3, 20, 20)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(normalised(x[0]), plain((x[0] - mean) / std))
    params = {k: v.unsqueeze(0).expand(2, *v.shape) for k, v in plain.named_parameters()}
    torch.testing.assert_close(normalised.forward_tasks(params, x), plain.forward_tasks(params, (x - mean) / std))
    with pytest.raises(ValueError, match="3 input channels"):
        Conv4(ways=5, in_channels=1, normalize="imagenet")
