"""The four MNIST classifiers of the paper's Table 1: ``mlp``, ``resnet``, ``odenet``, ``rknet``.

``resnet``, ``odenet`` and ``rknet`` share the reference code's layout: a
downsampling stem (28x28 -> 6x6 at 64 channels), a feature part, and a head
(GroupNorm, ReLU, global average pooling, a linear layer to 10 classes). The
feature part is 6 residual blocks (ResNet), or one ``ODEBlock`` whose dynamics
are a residual block's two 3x3 convolutions with time as an extra input
channel, trained with the adjoint (ODE-Net) or by backpropagating through the
Runge-Kutta solver (RK-Net).

Parameter counts (``count_parameters``) with the default ``downsampling="conv"``:
ResNet 576,778 and ODE-Net/RK-Net 208,266; the paper reports 0.60 M and
0.22 M. The reference code's other stem, ``downsampling="res"`` (two
stride-2 residual blocks), gives 601,482 and 232,970.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict

import torch
from torch import nn

import ndode

from .odeblock import BACKSOLVE, ODEBlock, ode_blocks

__all__ = [
    "MODELS",
    "build_mnist_model",
    "count_parameters",
    "ResBlock",
    "ConcatConv2d",
    "ConvODEFunc",
    "ODEBlock",
    "ode_blocks",
]

N_CLASSES = 10


def norm(dim: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, dim), dim)


def conv3x3(dim_in: int, dim_out: int, stride: int = 1) -> nn.Conv2d:
    # No bias: a GroupNorm follows every use, as in the reference code.
    return nn.Conv2d(dim_in, dim_out, 3, stride=stride, padding=1, bias=False)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(relu(norm(conv(relu(norm(x))))))."""

    def __init__(self, dim_in: int, dim_out: int, stride: int = 1, shortcut: nn.Module | None = None):
        super().__init__()
        self.norm1 = norm(dim_in)
        self.conv1 = conv3x3(dim_in, dim_out, stride)
        self.norm2 = norm(dim_out)
        self.conv2 = conv3x3(dim_out, dim_out)
        self.shortcut = shortcut
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.norm1(x))
        # A projection shortcut sees the normalised input, as in pre-activation ResNets.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.norm2(out)))
        return out + shortcut


class ConcatConv2d(nn.Module):
    """A convolution that also sees the time ``t`` as a constant extra input channel."""

    def __init__(self, dim_in: int, dim_out: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(dim_in + 1, dim_out, kernel_size, stride=stride, padding=padding)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])
        return self.conv(torch.cat([tt, x], dim=1))


class ConvODEFunc(nn.Module):
    """dh/dt = f(h, t): the residual block's layers, time-dependent (the ODE-Net's dynamics)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = norm(dim)
        self.conv1 = ConcatConv2d(dim, dim)
        self.norm2 = norm(dim)
        self.conv2 = ConcatConv2d(dim, dim)
        self.norm3 = norm(dim)
        # Not in place: the solver combines stages from the same state.
        self.relu = nn.ReLU()

    def forward(self, t, h):
        out = self.conv1(t, self.relu(self.norm1(h)))
        out = self.conv2(t, self.relu(self.norm2(out)))
        return self.norm3(out)


def _downsampling(kind: str, dim: int) -> nn.Sequential:
    # 1x28x28 -> dim x 26x26 -> 13x13 -> 6x6
    if kind == "conv":
        return nn.Sequential(
            nn.Conv2d(1, dim, 3, 1),
            norm(dim), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 4, 2, 1),
            norm(dim), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 4, 2, 1),
        )
    if kind == "res":
        return nn.Sequential(
            nn.Conv2d(1, dim, 3, 1),
            ResBlock(dim, dim, stride=2, shortcut=nn.Conv2d(dim, dim, 1, 2, bias=False)),
            ResBlock(dim, dim, stride=2, shortcut=nn.Conv2d(dim, dim, 1, 2, bias=False)),
        )
    raise ValueError(f"downsampling={kind!r} is not one of 'conv', 'res'")


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(norm(dim), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, N_CLASSES))


def _convnet(stem: nn.Module, features: nn.Module, dim: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(downsampling=stem, features=features, head=_head(dim)))


# --------------------------------------------------------------------------- the four models


def mlp(hidden: int = 300) -> nn.Sequential:
    """One hidden layer of ``hidden`` ReLU units (the paper's 1-layer MLP, 0.24 M parameters)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, N_CLASSES))


def resnet(dim: int = 64, n_blocks: int = 6, downsampling: str = "conv") -> nn.Sequential:
    """The downsampling stem, ``n_blocks`` residual blocks, the head."""
    return _convnet(_downsampling(downsampling, dim), nn.Sequential(*[ResBlock(dim, dim) for _ in range(n_blocks)]), dim)


def odenet(
    dim: int = 64,
    downsampling: str = "conv",
    method: str = "dopri5",
    rtol: float = 1e-3,
    atol: float = 1e-3,
    options: dict | None = None,
    adjoint: ndode.Adjoint | None = BACKSOLVE,
) -> nn.Sequential:
    """The stem, one ``ODEBlock`` over [0, 1], the head.

    ``adjoint=ndode.BacksolveAdjoint()`` (the default) is the paper's ODE-Net
    (gradients by the adjoint, O(1) memory); ``adjoint=None`` its RK-Net
    (gradients backpropagated through the Runge-Kutta solver's steps);
    ``ndode.CheckpointAdjoint()`` RK-Net's gradients from the checkpointed
    adjoint (see ``ODEBlock``). ``options`` go
    to the solver unchanged (``step_size`` for fixed-step methods, ``max_num_steps``, ...).
    """
    step_size = (options or {}).get("step_size")
    if step_size is not None and not (isinstance(step_size, (int, float)) and 0 < step_size <= 1):
        raise ValueError(f"step_size={step_size!r} must be a number in (0, 1] (the block integrates over [0, 1])")
    block = ODEBlock(ConvODEFunc(dim), t0=0.0, t1=1.0, method=method, rtol=rtol, atol=atol,
                     options=options, adjoint=adjoint)
    return _convnet(_downsampling(downsampling, dim), block, dim)


MODELS = {"mlp": mlp, "resnet": resnet, "odenet": odenet, "rknet": functools.partial(odenet, adjoint=None)}


def build_mnist_model(name: str, **cfg) -> nn.Module:
    """Build one of the paper's MNIST models by name: ``mlp``, ``resnet``, ``odenet``, ``rknet``.

    ``cfg`` are the builder's keyword arguments (e.g. ``rtol=1e-4`` for the ODE
    models, ``n_blocks`` for ResNet); unknown names or options raise with the
    allowed ones listed.
    """
    if name not in MODELS:
        raise ValueError(f"unknown MNIST model {name!r}; known models: {', '.join(MODELS)}")
    builder = MODELS[name]
    allowed = list(inspect.signature(builder).parameters)
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise TypeError(f"MNIST model {name!r} does not take option(s) {', '.join(unknown)}; "
                        f"its options are: {', '.join(allowed)}")
    return builder(**cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (the "# Params" column of Table 1)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
