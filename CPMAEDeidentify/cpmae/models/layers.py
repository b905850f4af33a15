"""Building blocks shared by the tokenizer and the prior.

Full-resolution 3-D convolutions are what makes 256³ slow on a CPU (a 32-channel 3×3×3 conv at
256³ costs ~8 s here), so both networks move between resolutions with space-to-depth
("pixel unshuffle") and its inverse instead of strided convs at the top level.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pixel_unshuffle3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """[B, C, D, H, W] -> [B, C·r³, D/r, H/r, W/r] (space to depth)."""
    if r == 1:
        return x
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // r, r, h // r, r, w // r, r)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * r**3, d // r, h // r, w // r)


def pixel_shuffle3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """[B, C·r³, D, H, W] -> [B, C, D·r, H·r, W·r] (depth to space), inverse of ``pixel_unshuffle3d``."""
    if r == 1:
        return x
    b, c, d, h, w = x.shape
    co = c // r**3
    x = x.reshape(b, co, r, r, r, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, co, d * r, h * r, w * r)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each voxel. Purely local: unlike GroupNorm, whose
    statistics span the whole volume, the output at a voxel does not depend on how large a
    crop was encoded, so tokens of a 64³ training crop equal those of the whole head."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer_norm over a channels-last view: one fused pass instead of seven, and its output is
        # channels-last in memory, which the following convs and norms keep (2.6-6× faster here)
        return F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, self.eps).movedim(-1, 1)


NORMS = ("group", "channel")


def norm(channels: int, kind: str = "group") -> nn.Module:
    """``group``: GroupNorm (architecture 1, whole-volume statistics); ``channel``: ChannelNorm."""
    if kind == "channel":
        return ChannelNorm(channels)
    if kind != "group":
        raise ValueError(f"norm must be one of {NORMS}, not {kind!r}")
    return nn.GroupNorm(min(8, channels), channels)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that takes oneDNN for float32 inference on a CPU, whatever the input's size.

    PyTorch sends a one-scan input whose N·C·D·H is at most 20,480 to its slow im2col kernel
    (a threshold tuned on 2-D images): every block of the prior (64 channels at 16³, 128 at 8³)
    fell there and ran 3× slower than oneDNN, 83 % of a sampling step. Training (gradients on)
    keeps PyTorch's own choice.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (input.device.type == "cpu" and input.dtype == torch.float32 and weight.dtype == torch.float32
                and not torch.is_grad_enabled() and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return torch.ops.aten.mkldnn_convolution(input, weight, bias, list(self.padding),
                                                     list(self.stride), list(self.dilation), self.groups)
        return super()._conv_forward(input, weight, bias)


class ResBlock(nn.Module):
    """Pre-norm residual block of two 3×3×3 convs; optional FiLM from a conditioning vector."""

    def __init__(self, channels: int, cond_dim: int = 0, norm_kind: str = "group"):
        super().__init__()
        self.norm1, self.conv1 = norm(channels, norm_kind), Conv3d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = norm(channels, norm_kind), Conv3d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()
        self.film = nn.Linear(cond_dim, 2 * channels) if cond_dim else None
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None and cond is not None:
            scale, shift = self.film(cond).chunk(2, dim=1)
            h = h * (1 + scale[:, :, None, None, None]) + shift[:, :, None, None, None]
        return x + self.conv2(self.act(h))


class SelfAttention3d(nn.Module):
    """Global self-attention over a small (coarsest) grid; cheap at 8³ = 512 positions."""

    def __init__(self, channels: int, heads: int = 4, norm_kind: str = "group"):
        super().__init__()
        self.norm = norm(channels, norm_kind)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        s = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(s, s, s, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, d, h, w)
