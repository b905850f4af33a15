"""3-D VQ-VAE tokenizer (one instance for the brain B·X, one for the rest (1-B)·X, as in CP-MAE).

Layout, chosen for CPU speed (see docs/ARCHITECTURE.md): space-to-depth straight to twice the
token resolution, one thin residual level there, a 2×2×2 stride-2 conv to the token grid,
residual blocks, and an FSQ bottleneck. The decoder mirrors it and ends with depth-to-space, so
no convolution ever runs at the full 128³/256³ grid. It is fully convolutional: the 256³ model
trains on 128³ crops at 1 mm and runs on whole volumes.

Two architectures (``arch`` in the config; bundles store it):
1. the demonstration weights of 2026-11: GroupNorm, 3 × 8 levels = 512 codes. GroupNorm's
   statistics span the whole input, so a crop and the whole head give different tokens, and
   512 codes could not carry a face (face PSNR < 20 dB, ``shared/notes/model-review.md``).
2. local: per-voxel channel norm only, so tokens depend on a bounded neighbourhood (the test
   compares a crop with the whole volume); FSQ 8·8·8·5·5 = 12,800 codes, which the prior
   predicts digit by digit (``models/prior.py``) so its cost does not grow with the codebook;
   and clean air: a token cell whose input is all below ``air_level`` gets code ``AIR`` and
   decodes to exactly 0, so air is one code (the prior's crops can skip it, the sampler can
   draw it) and the background carries no decoded haze.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Tuple

import torch
from torch import nn

from cpmae.geometry import DEFAULT_RESOLUTION
from cpmae.models.fsq import FSQ
from cpmae.models.layers import Conv3d, ResBlock, norm, pixel_shuffle3d, pixel_unshuffle3d


AIR = 0  #: architecture 2: the code of an all-air token cell (every FSQ digit at its lowest level)


@dataclass
class TokenizerConfig:
    in_size: int = DEFAULT_RESOLUTION  # model grid side: a key of geometry.GRIDS
    token_size: int = 32  # token grid side
    channels: Tuple[int, int] = (24, 48)  # at 2× token resolution, at token resolution
    blocks: Tuple[int, int] = (1, 2)
    levels: Tuple[int, ...] = field(default=(8, 8, 8))
    # 1: GroupNorm (2026-11 demo bundles; the default of a stored config without this key),
    # 2: local norm + clean air (module docstring; its defaults: ``cpmae.models.build.ARCH2``)
    arch: int = 1
    air_level: float = 0.02  # arch 2: a cell whose normalised input stays below this is air

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
        if cfg.arch not in (1, 2):
            raise ValueError(f"unknown tokenizer architecture {cfg.arch}")
        self.cfg = cfg
        self.r = cfg.factor // 2  # space-to-depth factor to reach 2× token resolution
        c1, c2 = cfg.channels
        nk = "group" if cfg.arch == 1 else "channel"
        k_io = 1 if cfg.arch == 1 else 3  # arch 2: a 3³ conv at 2× token resolution sees across cell edges
        self.quantizer = FSQ(cfg.levels)
        self.codebook_size = self.quantizer.codebook_size
        act = nn.SiLU
        self.enc_in = Conv3d(self.r**3, c1, k_io, padding=k_io // 2)
        self.enc_hi = nn.ModuleList([ResBlock(c1, norm_kind=nk) for _ in range(cfg.blocks[0])])
        self.enc_down = nn.Sequential(norm(c1, nk), act(), Conv3d(c1, c2, 2, stride=2))
        self.enc_lo = nn.ModuleList([ResBlock(c2, norm_kind=nk) for _ in range(cfg.blocks[1])])
        self.enc_out = nn.Sequential(norm(c2, nk), act(), Conv3d(c2, self.quantizer.dim, 1))
        self.dec_in = Conv3d(self.quantizer.dim, c2, 3, padding=1)
        self.dec_lo = nn.ModuleList([ResBlock(c2, norm_kind=nk) for _ in range(cfg.blocks[1])])
        self.dec_up = nn.Sequential(norm(c2, nk), act(), nn.ConvTranspose3d(c2, c1, 2, stride=2))
        self.dec_hi = nn.ModuleList([ResBlock(c1, norm_kind=nk) for _ in range(cfg.blocks[0])])
        self.dec_out = nn.Sequential(norm(c1, nk), act(), Conv3d(c1, self.r**3, k_io, padding=k_io // 2))

    @property
    def clean_air(self) -> bool:
        return self.cfg.arch >= 2

    def air_cells(self, x: torch.Tensor) -> torch.Tensor:
        """[B,1,S,S,S] -> bool [B,T,T,T]: token cells whose whole input is below ``air_level``."""
        f = self.cfg.factor
        return torch.nn.functional.max_pool3d(x.float().abs(), f, f)[:, 0] < self.cfg.air_level

    def _mask_air(self, volume: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Zero the decoded voxels of air cells (clean air)."""
        f = self.cfg.factor
        keep = (tokens != AIR).to(volume.dtype)[:, None]
        keep = keep.repeat_interleave(f, 2).repeat_interleave(f, 3).repeat_interleave(f, 4)
        return volume * keep

    def quantize(self, x: torch.Tensor):
        """x -> (codes, token indices); arch 2 puts every air cell on code ``AIR``."""
        codes, idx = self.quantizer(self.encode_latent(x))
        if self.clean_air:
            air = self.air_cells(x)
            idx = torch.where(air, torch.full_like(idx, AIR), idx)
            air_codes = self.quantizer.indices_to_codes(torch.zeros_like(idx[:1, :1, :1, :1]))
            codes = torch.where(air[:, None], air_codes.to(codes.dtype), codes)
        return codes, idx

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
        codes, idx = self.quantize(x)
        recon = self.decode_codes(codes)
        if self.clean_air:
            recon = self._mask_air(recon, idx)
        return recon, idx, codes

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,1,S,S,S] -> token indices [B,T,T,T] (int64)."""
        return self.quantize(x)[1]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """token indices [B,T,T,T] -> volume [B,1,S,S,S]."""
        codes = self.quantizer.indices_to_codes(tokens).to(next(self.parameters()).dtype)
        out = self.decode_codes(codes)
        return self._mask_air(out, tokens) if self.clean_air else out
