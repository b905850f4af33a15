"""Token prior of architecture 2: one softmax per FSQ digit, position and geometry as inputs.

Why not one softmax over all codes: with 12,800 codes (FSQ 8·8·8·5·5, what a face needs) the
output layer and the categorical draw would cost 25× those of the 512-code prior. Predicting the
five digits of a code as independent categoricals (34 logits) keeps the cost flat; the network
still sees every digit of every neighbour, so digits are coupled through the context and through
the iterative (Paella) sampling.

Inputs per token cell, concatenated channel-wise after a per-digit embedding:
- the noisy non-brain token's digits and the brain token's digits (aligned grids, as in CP-MAE);
- ``cond``: float maps, brain occupancy first, then optional face-shape maps (``shape_channels``,
  a coarse map of a face surface drawn from a shape model at de-identification time);
- three coordinate channels from ``origin``, the crop's corner on the full token grid, so a 16³
  training crop knows where it sits (the 2026-11 prior had no position information);
- the noise level t through FiLM in every residual block.
Index ``codebook_size`` of the brain tokens and all-zero ``cond`` mean "no condition"
(condition dropout in training, classifier-free guidance at sampling).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cpmae.models.layers import Conv3d, ResBlock, SelfAttention3d, norm, pixel_shuffle3d
from cpmae.models.prior import PriorConfig, unet_trunk

NORM = "channel"


def digit_basis(levels) -> torch.Tensor:
    return torch.cumprod(torch.tensor([1] + list(levels[:-1]), dtype=torch.int64), 0)


def to_digits(tokens: torch.Tensor, levels) -> torch.Tensor:
    """code indices [B,...] -> digits [B,D,...] (mixed radix, first digit least significant, as FSQ)."""
    basis = digit_basis(levels).to(tokens.device)
    lv = torch.tensor(list(levels), dtype=torch.int64, device=tokens.device)
    shape = (1, -1) + (1,) * (tokens.dim() - 1)
    return (tokens.unsqueeze(1) // basis.view(shape)) % lv.view(shape)


def from_digits(digits: torch.Tensor, levels) -> torch.Tensor:
    """digits [B,D,...] -> code indices [B,...]."""
    basis = digit_basis(levels).to(digits.device)
    shape = (1, -1) + (1,) * (digits.dim() - 2)
    return (digits * basis.view(shape)).sum(1)


def coordinates(origin: Optional[torch.Tensor], batch: int, size, full: int, device) -> torch.Tensor:
    """[B,3,d,h,w] positions in [-1, 1] on the full ``full``³ token grid of a window at ``origin``."""
    if origin is None:
        origin = torch.zeros(batch, 3, dtype=torch.float32, device=device)
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in size]
    grids = torch.meshgrid(*axes, indexing="ij")
    pos = torch.stack(grids, 0)[None] + origin.float().view(-1, 3, 1, 1, 1).to(device)
    return pos / max(1, full - 1) * 2.0 - 1.0


def _space_to_depth_last(h: torch.Tensor, r: int) -> torch.Tensor:
    """[B,d,h,w,C] -> [B,C·r³,d/r,h/r,w/r] laid out channels-last: ``pixel_unshuffle3d`` of the
    channel-first tensor (channel c·r³ + offset), with one copy."""
    b, d, hh, w, c = h.shape
    x = h.reshape(b, d // r, r, hh // r, r, w // r, r, c).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, d // r, hh // r, w // r, c * r**3).movedim(-1, 1)


class DigitPrior(nn.Module):
    def __init__(self, cfg: PriorConfig = PriorConfig()):
        super().__init__()
        if cfg.arch != 2:
            raise ValueError("DigitPrior is architecture 2")
        levels = tuple(int(v) for v in cfg.levels)
        k = 1
        for v in levels:
            k *= v
        if k != cfg.codebook_size:
            raise ValueError(f"levels {levels} make {k} codes, not codebook_size {cfg.codebook_size}")
        self.cfg, self.levels = cfg, levels
        self.codebook_size = k
        self.null_index = k
        e, c0, c1 = cfg.embed_dim, cfg.channels[0], cfg.channels[1]
        tdim = 4 * c0
        self.embed_x = nn.ModuleList([nn.Embedding(v, e) for v in levels])
        self.embed_brain = nn.ModuleList([nn.Embedding(v + 1, e) for v in levels])  # last entry: no condition
        self.n_cond = cfg.cond_channels + cfg.shape_channels
        cin = 2 * e * len(levels) + self.n_cond + 3
        self.time_mlp = nn.Sequential(nn.Linear(c0, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.stem = Conv3d(cin * 8, c0, 1)
        self.down0 = nn.ModuleList([ResBlock(c0, tdim, NORM) for _ in range(cfg.blocks)])
        self.down = nn.Sequential(norm(c0, NORM), nn.SiLU(), Conv3d(c0, c1, 2, stride=2))
        self.mid = nn.ModuleList([ResBlock(c1, tdim, NORM) for _ in range(cfg.blocks)])
        self.attn = SelfAttention3d(c1, norm_kind=NORM) if cfg.attention else nn.Identity()
        self.up = nn.Sequential(norm(c1, NORM), nn.SiLU(), nn.ConvTranspose3d(c1, c0, 2, stride=2))
        self.merge = Conv3d(2 * c0, c0, 1)
        self.up0 = nn.ModuleList([ResBlock(c0, tdim, NORM) for _ in range(cfg.blocks)])
        self.head = nn.Sequential(norm(c0, NORM), nn.SiLU(), Conv3d(c0, cfg.head_channels * 8, 1))
        self.out = nn.Sequential(norm(cfg.head_channels, NORM), nn.SiLU(), Conv3d(cfg.head_channels, sum(levels), 1))

    def null_brain(self, like: torch.Tensor) -> torch.Tensor:
        return torch.full_like(like, self.null_index)

    def _embed_brain(self, brain: torch.Tensor) -> torch.Tensor:
        null = brain >= self.null_index
        digits = to_digits(brain.clamp(max=self.null_index - 1), self.levels)
        parts = []
        for d, (emb, v) in enumerate(zip(self.embed_brain, self.levels)):
            parts.append(emb(torch.where(null, torch.full_like(digits[:, d], v), digits[:, d])))
        return torch.cat(parts, -1)

    def forward(self, noisy: torch.Tensor, brain: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None,
                origin: Optional[torch.Tensor] = None) -> torch.Tensor:
        """noisy, brain [B,T,T,T] int64; t [B]; cond [B,n_cond,T,T,T]; origin [B,3] -> logits [B,Σlevels,T,T,T]."""
        b, size = noisy.shape[0], tuple(noisy.shape[1:])
        if any(s % 4 for s in size):
            raise ValueError(f"token grid sides must be multiples of 4, got {size}")
        xd = to_digits(noisy, self.levels)
        if cond is None:
            cond = torch.zeros(b, self.n_cond, *size, device=noisy.device)
        if cond.shape[1] != self.n_cond:
            raise ValueError(f"prior expects {self.n_cond} condition maps, got {cond.shape[1]}")
        pos = coordinates(origin, b, size, self.cfg.token_size, noisy.device)
        emb = [emb(xd[:, d]) for d, emb in enumerate(self.embed_x)] + [self._embed_brain(brain)]
        # assembled channels-last ([B,d,h,w,C], one copy) and moved to depth channels-last: the same
        # values and channel order as channel-first cat + ``pixel_unshuffle3d`` in a third of the copies
        h = torch.cat(emb + [cond.to(emb[0].dtype).movedim(1, -1), pos.to(emb[0].dtype).movedim(1, -1)], -1)
        h = unet_trunk(self, self.stem(_space_to_depth_last(h, 2)), t)
        return self.out(pixel_shuffle3d(self.head(h), 2))

    def _split(self, logits: torch.Tensor):
        start = 0
        for v in self.levels:
            yield logits[:, start:start + v]
            start += v

    def loss(self, logits: torch.Tensor, target: torch.Tensor, replaced: torch.Tensor,
             clean_weight: float = 0.3) -> torch.Tensor:
        """Sum over digits of the cross-entropy (nats per token), Paella-weighted like ``prior_loss``."""
        digits = to_digits(target, self.levels)
        ce = sum(F.cross_entropy(lg.float(), digits[:, d], reduction="none")
                 for d, lg in enumerate(self._split(logits)))
        w = torch.where(replaced, 1.0, clean_weight).to(ce.dtype)
        return (ce * w).sum() / w.sum()

    def token_nll(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood [B,...] (sum over digits)."""
        digits = to_digits(target, self.levels)
        return sum(F.cross_entropy(lg.float(), digits[:, d], reduction="none")
                   for d, lg in enumerate(self._split(logits)))

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        return from_digits(torch.stack([lg.argmax(1) for lg in self._split(logits)], 1), self.levels)

    def draw(self, logits: torch.Tensor, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """One code per cell: each digit drawn from its own softmax, randomness from ``generator``."""
        from cpmae.sampler import draw_categorical

        digits = [draw_categorical(lg, generator, temperature) for lg in self._split(logits)]
        return from_digits(torch.stack(digits, 1), self.levels)
