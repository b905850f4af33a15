"""Conditional token prior H(E2 | E1): a Paella-style convolutional U-Net over the token grid.

Paella's authors chose a CNN over a transformer; a ViT over 32³ tokens costs ~14× more here.
Brain tokens are spatially aligned with the non-brain tokens, so their embeddings are simply
concatenated channel-wise. The noise level t enters through FiLM; self-attention only at the
coarsest (8³) level. Index ``K`` of the brain embedding means "no condition" (condition
dropout during training keeps classifier-free guidance possible).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Tuple

import torch
from torch import nn

from cpmae.models.layers import Conv3d, ResBlock, SelfAttention3d, norm, pixel_shuffle3d, pixel_unshuffle3d


@dataclass
class PriorConfig:
    codebook_size: int = 512
    token_size: int = 32
    embed_dim: int = 32  # arch 2: per FSQ digit (arch 1: per code)
    channels: Tuple[int, int] = (80, 128)  # at token/2 and token/4 resolution
    blocks: int = 2
    cond_dropout: float = 0.1
    head_channels: int = 64
    attention: bool = True
    # architecture: 1 = one softmax over all codes (2026-11 demo bundles; the default of a stored
    # config without this key); 2 = ``DigitPrior`` (its defaults: ``cpmae.models.build.ARCH2``)
    arch: int = 1
    levels: Tuple[int, ...] = (8, 8, 8, 5, 5)  # arch 2: the tokenizers' FSQ levels
    cond_channels: int = 1  # arch 2: float maps per token cell (brain occupancy)
    shape_channels: int = 0  # arch 2: face-shape maps per token cell (0 = no shape condition)
    shape_dropout: float = 0.15  # arch 2: share of training samples whose shape maps are zeroed

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PriorConfig":
        d = dict(d)
        for k in ("channels", "levels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def unet_trunk(net: nn.Module, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The U-Net body both prior architectures share (same module names, so bundles keep loading):
    FiLM'd blocks at full and half token resolution, attention at the coarsest level, one skip."""
    temb = net.time_mlp(timestep_embedding(t, net.cfg.channels[0]))
    for blk in net.down0:
        h = blk(h, temb)
    skip = h
    h = net.down(h)
    for blk in net.mid:
        h = blk(h, temb)
    h = net.attn(h)
    h = net.merge(torch.cat([net.up(h), skip], dim=1))
    for blk in net.up0:
        h = blk(h, temb)
    return h


class TokenPrior(nn.Module):
    def __init__(self, cfg: PriorConfig = PriorConfig()):
        super().__init__()
        if cfg.arch != 1:
            raise ValueError("TokenPrior is architecture 1 (use cpmae.models.build)")
        self.cfg = cfg
        k, e = cfg.codebook_size, cfg.embed_dim
        c0, c1 = cfg.channels
        tdim = 4 * c0
        self.codebook_size = k
        self.null_index = k
        self.embed_x = nn.Embedding(k, e)
        self.embed_brain = nn.Embedding(k + 1, e)
        self.time_mlp = nn.Sequential(nn.Linear(c0, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.stem = Conv3d(2 * e * 8, c0, 1)
        self.down0 = nn.ModuleList([ResBlock(c0, tdim) for _ in range(cfg.blocks)])
        self.down = nn.Sequential(norm(c0), nn.SiLU(), Conv3d(c0, c1, 2, stride=2))
        self.mid = nn.ModuleList([ResBlock(c1, tdim) for _ in range(cfg.blocks)])
        self.attn = SelfAttention3d(c1) if cfg.attention else nn.Identity()
        self.up = nn.Sequential(norm(c1), nn.SiLU(), nn.ConvTranspose3d(c1, c0, 2, stride=2))
        self.merge = Conv3d(2 * c0, c0, 1)
        self.up0 = nn.ModuleList([ResBlock(c0, tdim) for _ in range(cfg.blocks)])
        self.head = nn.Sequential(norm(c0), nn.SiLU(), Conv3d(c0, cfg.head_channels * 8, 1))
        self.out = nn.Sequential(norm(cfg.head_channels), nn.SiLU(), Conv3d(cfg.head_channels, k, 1))

    def null_brain(self, like: torch.Tensor) -> torch.Tensor:
        """Brain tokens meaning "no condition" (for condition dropout / guidance)."""
        return torch.full_like(like, self.null_index)

    def loss(self, logits, target, replaced, clean_weight: float = 0.3) -> torch.Tensor:
        from cpmae.noising import prior_loss

        return prior_loss(logits, target, replaced, clean_weight)

    def token_nll(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood [B,...]."""
        return torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1)

    def draw(self, logits: torch.Tensor, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        from cpmae.sampler import draw_categorical

        return draw_categorical(logits, generator, temperature)

    def forward(self, noisy: torch.Tensor, brain: torch.Tensor, t: torch.Tensor, cond=None,
                origin=None) -> torch.Tensor:
        """noisy, brain: [B,T,T,T] int64; t: [B] in [0,1] -> logits [B,K,T,T,T].

        ``cond`` and ``origin`` are architecture 2's inputs; this architecture ignores them."""
        h = torch.cat([self.embed_x(noisy), self.embed_brain(brain)], dim=-1)  # [B,T,T,T,2e]
        h = pixel_unshuffle3d(h.permute(0, 4, 1, 2, 3).contiguous(), 2)
        h = unet_trunk(self, self.stem(h), t)
        return self.out(pixel_shuffle3d(self.head(h), 2))
