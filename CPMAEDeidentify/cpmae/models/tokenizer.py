"""3-D VQ-VAE tokenizer (one instance for the brain B·X, one for the rest (1-B)·X, as in CP-MAE).

Layout, chosen for CPU speed (see docs/ARCHITECTURE.md): space-to-depth straight to twice the
token resolution, one thin residual level there, a 2×2×2 stride-2 conv to the token grid,
residual blocks, and an FSQ bottleneck of 3 channels × 8 levels = 512 codes. The decoder mirrors
it and ends with depth-to-space, so no convolution ever runs at the full 128³/256³ grid. It is
fully convolutional: the 256³ model trains on 128³ crops at 1 mm and runs on whole volumes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Tuple

import torch
from torch import nn

from cpmae.models.fsq import FSQ
from cpmae.models.layers import ResBlock, norm, pixel_shuffle3d, pixel_unshuffle3d


@dataclass
class TokenizerConfig:
    in_size: int = 256  # model grid side (256 at 1 mm or 128 at 2 mm)
    token_size: int = 32  # token grid side
    channels: Tuple[int, int] = (24, 48)  # at 2× token resolution, at token resolution
    blocks: Tuple[int, int] = (1, 2)
    levels: Tuple[int, ...] = field(default=(8, 8, 8))

    @property
    def factor(self) -> int:
        """Voxels per token along each axis (8 at 256³, 4 at 128³)."""
        return self.in_size // self.token_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        d = dict(d)
        for k in ("channels", "blocks", "levels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig = TokenizerConfig()):
        super().__init__()
        if cfg.factor < 2 or cfg.in_size % cfg.token_size:
            raise ValueError(f"in_size {cfg.in_size} must be a multiple (>=2) of token_size {cfg.token_size}")
        self.cfg = cfg
        self.r = cfg.factor // 2  # space-to-depth factor to reach 2× token resolution
        c1, c2 = cfg.channels
        self.quantizer = FSQ(cfg.levels)
        self.codebook_size = self.quantizer.codebook_size
        act = nn.SiLU
        self.enc_in = nn.Conv3d(self.r**3, c1, 1)
        self.enc_hi = nn.ModuleList([ResBlock(c1) for _ in range(cfg.blocks[0])])
        self.enc_down = nn.Sequential(norm(c1), act(), nn.Conv3d(c1, c2, 2, stride=2))
        self.enc_lo = nn.ModuleList([ResBlock(c2) for _ in range(cfg.blocks[1])])
        self.enc_out = nn.Sequential(norm(c2), act(), nn.Conv3d(c2, self.quantizer.dim, 1))
        self.dec_in = nn.Conv3d(self.quantizer.dim, c2, 3, padding=1)
        self.dec_lo = nn.ModuleList([ResBlock(c2) for _ in range(cfg.blocks[1])])
        self.dec_up = nn.Sequential(norm(c2), act(), nn.ConvTranspose3d(c2, c1, 2, stride=2))
        self.dec_hi = nn.ModuleList([ResBlock(c1) for _ in range(cfg.blocks[0])])
        self.dec_out = nn.Sequential(norm(c1), act(), nn.Conv3d(c1, self.r**3, 1))

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,1,S,S,S] (normalised intensities) -> continuous latent [B,3,T,T,T]."""
        h = self.enc_in(pixel_unshuffle3d(x, self.r))
        for blk in self.enc_hi:
            h = blk(h)
        h = self.enc_down(h)
        for blk in self.enc_lo:
            h = blk(h)
        return self.enc_out(h)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        h = self.dec_in(codes)
        for blk in self.dec_lo:
            h = blk(h)
        h = self.dec_up(h)
        for blk in self.dec_hi:
            h = blk(h)
        return pixel_shuffle3d(self.dec_out(h), self.r)

    def forward(self, x: torch.Tensor):
        """Training pass: (reconstruction, token indices, quantised codes)."""
        codes, idx = self.quantizer(self.encode_latent(x))
        return self.decode_codes(codes), idx, codes

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,1,S,S,S] -> token indices [B,T,T,T] (int64)."""
        return self.quantizer(self.encode_latent(x))[1]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """token indices [B,T,T,T] -> volume [B,1,S,S,S]."""
        codes = self.quantizer.indices_to_codes(tokens).to(next(self.parameters()).dtype)
        return self.decode_codes(codes)
