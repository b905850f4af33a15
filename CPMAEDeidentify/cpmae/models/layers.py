"""Building blocks shared by the tokenizer and the prior.

Full-resolution 3-D convolutions are what makes 256³ slow on a CPU (a 32-channel 3×3×3 conv at
256³ costs ~8 s here), so both networks move between resolutions with space-to-depth
("pixel unshuffle") and its inverse instead of strided convs at the top level.
"""
from __future__ import annotations

import torch
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


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """Pre-norm residual block of two 3×3×3 convs; optional FiLM from a conditioning vector."""

    def __init__(self, channels: int, cond_dim: int = 0):
        super().__init__()
        self.norm1, self.conv1 = norm(channels), nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = norm(channels), nn.Conv3d(channels, channels, 3, padding=1)
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

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.norm = norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        s = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(s, s, s, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, d, h, w)
