"""Reconstruction losses and quality metrics that need no downloaded weights.

LPIPS or MedicalNet perceptual losses need weights from a hub, which this project cannot
fetch offline, so the tokenizers train on L1 + 3-D SSIM (Gaussian window, separable, so it
costs three thin 1-D convolutions per statistic instead of one 11³ kernel).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def _gaussian_1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of x [N,1,D,H,W] ('valid' region only, no padding artefacts)."""
    k = g.numel()
    x = F.conv3d(x, g.view(1, 1, k, 1, 1))
    x = F.conv3d(x, g.view(1, 1, 1, k, 1))
    return F.conv3d(x, g.view(1, 1, 1, 1, k))


def ssim3d(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 7, sigma: float = 1.5,
           reduction: str = "mean") -> torch.Tensor:
    """Structural similarity of two volumes [B,1,D,H,W] (Wang et al. 2004, 3-D Gaussian window).

    ``reduction='none'`` returns one value per batch element.
    """
    if a.shape != b.shape or a.dim() != 5 or a.shape[1] != 1:
        raise ValueError(f"ssim3d expects two [B,1,D,H,W] tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    window = min(window, *a.shape[2:])
    a, b = a.float(), b.float()
    g = _gaussian_1d(window, sigma, a.device, a.dtype)
    c1, c2 = SSIM_C1 * data_range ** 2, SSIM_C2 * data_range ** 2
    stats = _blur(torch.cat([a, b, a * a, b * b, a * b], dim=0), g)
    mu_a, mu_b, aa, bb, ab = stats.chunk(5, dim=0)
    var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    per_item = s.flatten(1).mean(1)
    return per_item if reduction == "none" else per_item.mean()


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, ssim_weight: float) -> torch.Tensor:
    """L1 + ssim_weight·(1 − SSIM), averaged per sample so DDP shards average to the global batch."""
    loss = (recon.float() - target.float()).abs().mean()
    if ssim_weight:
        loss = loss + ssim_weight * (1.0 - ssim3d(recon, target))
    return loss


def psnr(recon: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over the whole batch."""
    mse = float(((recon.float() - target.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)


def codebook_stats(tokens: torch.Tensor, codebook_size: int) -> dict:
    """Share of codes used and perplexity (exp of the code-usage entropy) of a token batch."""
    counts = torch.bincount(tokens.flatten().cpu(), minlength=codebook_size).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    return {"codebook_usage": float((counts > 0).double().mean()),
            "perplexity": float(torch.exp(-(nz * nz.log()).sum()))}
