"""Random smooth deformations and MR intensity augmentation for the generated cohort.

Everything here works on plain arrays in one cubic grid, in *normalised* coordinates
(``[-1, 1]`` per axis, ``align_corners=True``, the convention of ``torch.grid_sample``), so
that it is independent of the image geometry. Fields are drawn and composed on a coarse
node grid (``FIELD_NODES``³, a few mm apart) and only the final displacement is upsampled
to the image, which keeps a 256³ subject within a few seconds on two CPU cores.

Random displacements are integrated from stationary velocity fields by scaling and
squaring, so that even a 12 mm face warp stays a diffeomorphism (no tearing or folding,
Jacobian determinant > 0); a node whose velocity is zero keeps a displacement of exactly
zero, which is what keeps the brain out of the face/skull warp.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

#: Nodes per axis of the coarse grid on which the fields are drawn and composed.
FIELD_NODES = 96
#: Scaling-and-squaring steps (velocity divided by 2**steps, then composed with itself).
SQUARING_STEPS = 6


@functools.lru_cache(maxsize=4)
def node_grid(nodes: int) -> torch.Tensor:
    """Identity positions of a nodes³ grid, shape [1, n, n, n, 3], last axis (x, y, z) normalised.

    Cached and shared: callers must not modify it in place.
    """
    lin = torch.linspace(-1.0, 1.0, nodes, dtype=torch.float32)
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    return torch.stack((x, y, z), dim=-1)[None].contiguous()


def sample_field(field: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Trilinear sample of a vector field [1, n, n, n, 3] at positions [1, m, m, m, 3] (border-clamped)."""
    out = F.grid_sample(field.permute(0, 4, 1, 2, 3), positions, mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.permute(0, 2, 3, 4, 1)


def smooth_noise(rng: np.random.Generator, nodes: int, channels: int, sigma_nodes: float) -> np.ndarray:
    """White noise smoothed by a Gaussian of ``sigma_nodes``, scaled to a peak magnitude of 1.

    Returns [channels, n, n, n] float32; the peak is taken over the vector magnitude so that
    a later multiplication by ``amplitude`` gives that many units of displacement at most.
    The noise is drawn and filtered on a lattice about ``sigma / 2`` apart and upsampled
    trilinearly: the same smoothness for a fraction of the cost of filtering every node.
    """
    coarse = int(min(nodes, max(8, np.ceil(2.0 * (nodes - 1) / sigma_nodes) + 1)))
    sigma = sigma_nodes * (coarse - 1) / (nodes - 1)
    noise = rng.standard_normal((channels, coarse, coarse, coarse)).astype(np.float32)
    smooth = np.stack([ndimage.gaussian_filter(c, sigma, mode="reflect") for c in noise])
    if coarse != nodes:
        smooth = F.interpolate(torch.from_numpy(smooth)[None], size=(nodes,) * 3, mode="trilinear",
                               align_corners=True)[0].numpy()
    peak = float(np.sqrt((smooth ** 2).sum(axis=0)).max())
    return smooth / max(peak, 1e-12)


def exponentiate(velocity: torch.Tensor, steps: int = SQUARING_STEPS) -> torch.Tensor:
    """Displacement of the flow of a stationary velocity field (scaling and squaring).

    ``velocity`` and the result are [1, n, n, n, 3] in normalised units. Where the velocity
    is exactly zero the displacement stays exactly zero: phi(x) + phi(x + phi(x)) = 0 there.
    """
    ident = node_grid(velocity.shape[1])
    disp = velocity / (2.0 ** steps)
    for _ in range(steps):
        disp = disp + sample_field(disp, ident + disp)
    return disp


def random_affine(rng: np.random.Generator, max_rot_deg: float, max_scale: float,
                  max_shift_mm: float) -> dict:
    """Draw rotation (deg about x, y, z), per-axis scale and translation (mm), uniform in ±bounds."""
    return {
        "rotation_deg": [float(v) for v in rng.uniform(-max_rot_deg, max_rot_deg, 3)],
        "scale": [float(v) for v in 1.0 + rng.uniform(-max_scale, max_scale, 3)],
        "translation_mm": [float(v) for v in rng.uniform(-max_shift_mm, max_shift_mm, 3)],
    }


def affine_matrix(rotation_deg, scale) -> np.ndarray:
    """3×3 matrix acting on (x, y, z) coordinates: rotations about x, y, z, then per-axis scale."""
    ax, ay, az = (math.radians(a) for a in rotation_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return (rz @ ry @ rx @ np.diag(scale)).astype(np.float32)


@dataclass
class Warp:
    """A backward map on the node grid: the output at x samples the input at x + displacement(x)."""

    displacement: torch.Tensor  # [1, n, n, n, 3], normalised units, (x, y, z) last

    def min_jacobian(self) -> float:
        """Smallest Jacobian determinant of x -> x + displacement(x) over the nodes (> 0: no folding)."""
        return float(jacobian_determinant(self.displacement).min())


def jacobian_determinant(displacement: torch.Tensor) -> np.ndarray:
    """Jacobian determinant of x -> x + u(x) at every node (central differences), [n, n, n]."""
    u = displacement[0].numpy().astype(np.float64)  # [z, y, x, 3] with components (x, y, z)
    n = u.shape[0]
    h = 2.0 / (n - 1)
    # d(component)/d(axis): array axes are (z, y, x); component c differentiated along axis of c
    grads = {}
    for c in range(3):
        gz, gy, gx = np.gradient(u[..., c], h)
        grads[c] = (gx, gy, gz)  # derivative along x, y, z
    j = [[grads[c][a] + (1.0 if a == c else 0.0) for a in range(3)] for c in range(3)]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))


def compose_warp(nodes: int, centre: np.ndarray, matrix: np.ndarray, translation: np.ndarray,
                 global_displacement: Optional[torch.Tensor], local_velocity: Optional[torch.Tensor]) -> Warp:
    """Output x -> affine -> global smooth warp -> face/skull warp, as one displacement field.

    ``centre`` and ``translation`` are (x, y, z) normalised; the affine acts about ``centre``.
    The local (face/skull) warp is applied last, in the source frame, so that its zero region
    (the dilated brain of the source) is exactly where the brain is sampled from.
    """
    ident = node_grid(nodes)
    c = torch.as_tensor(centre, dtype=torch.float32)
    m = torch.as_tensor(matrix, dtype=torch.float32)
    pos = c + (ident - c) @ m.T + torch.as_tensor(translation, dtype=torch.float32)
    if global_displacement is not None:  # a few mm over 40 mm: far from folding, no need to integrate
        pos = pos + sample_field(global_displacement, pos)
    if local_velocity is not None:
        pos = pos + sample_field(exponentiate(local_velocity), pos)
    return Warp(pos - ident)


@functools.lru_cache(maxsize=8)
def _upsampling_matrix(nodes: int, size: int) -> torch.Tensor:
    """[size, nodes] linear-interpolation weights from nodes to voxels (align_corners=True)."""
    pos = torch.linspace(0.0, nodes - 1.0, size, dtype=torch.float64)
    lo = pos.floor().clamp(max=nodes - 2).long()
    frac = pos - lo
    mat = torch.zeros(size, nodes, dtype=torch.float64)
    rows = torch.arange(size)
    mat[rows, lo] = 1.0 - frac
    mat[rows, lo + 1] = frac
    return mat.float()


def upsample_channels_last(field: torch.Tensor, size: int) -> torch.Tensor:
    """Trilinear upsampling of [n, n, n, C] to [size, size, size, C] as three small matmuls.

    Equal to ``F.interpolate(..., mode="trilinear", align_corners=True)`` but about twice as fast
    here and already in the channels-last layout ``grid_sample`` wants (no permute copy).
    """
    n, c = field.shape[0], field.shape[-1]
    u = _upsampling_matrix(n, size)
    out = torch.matmul(u, field.reshape(n * n, n, c))  # along x: [n*n, size, c]
    out = torch.matmul(u, out.reshape(n, n, size * c))  # along y: [n, size, size*c]
    out = torch.matmul(u, out.reshape(n, size * size * c))  # along z
    return out.reshape(size, size, size, c)


def apply_warp(volumes: torch.Tensor, warp: Warp) -> torch.Tensor:
    """Resample volumes [C, N, N, N] through the warp (trilinear, zero outside), C channels at once.

    The sampling positions (identity + displacement) are upsampled from the nodes directly:
    trilinear interpolation reproduces the identity exactly, so nothing is added at full size.
    """
    size = volumes.shape[-1]
    positions = (node_grid(warp.displacement.shape[1]) + warp.displacement)[0]
    grid = upsample_channels_last(positions.contiguous(), size)[None]
    out = F.grid_sample(volumes[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0]


@dataclass
class IntensityParams:
    """Scanner-like intensity changes, all relative to the head's intensity scale."""

    gamma: float  # contrast curve on x / scale
    bias_peak: float  # peak |log bias|; the bias field is exp(bias_peak * smooth noise)
    bias_sigma_mm: float  # smoothness of the bias field
    gain: float  # global multiplicative gain
    noise_sigma: float  # Rician noise level, as a fraction of the scale

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "IntensityParams":
        return cls(gamma=float(np.exp(rng.uniform(-0.2, 0.2))),
                   bias_peak=float(rng.uniform(0.05, 0.25)),
                   bias_sigma_mm=float(rng.uniform(50.0, 90.0)),
                   gain=float(np.exp(rng.uniform(-0.2, 0.2))),
                   noise_sigma=float(rng.uniform(0.005, 0.03)))


def augment_intensity(image: torch.Tensor, scale: float, params: IntensityParams, rng: np.random.Generator,
                      fov_mm: float) -> torch.Tensor:
    """gain · bias · (x/scale)^gamma with Rician noise, back in the input's units; finite and >= 0.

    ``image`` is [N, N, N] float32 and non-negative; ``fov_mm`` the grid's extent (for the
    bias field's smoothness in mm). Noise is drawn with a torch generator seeded from ``rng``.
    """
    size = image.shape[-1]
    bias_nodes = 16
    sigma_nodes = params.bias_sigma_mm / (fov_mm / (bias_nodes - 1))
    log_bias = params.bias_peak * smooth_noise(rng, bias_nodes, 1, sigma_nodes)
    bias = upsample_channels_last(torch.from_numpy(np.exp(log_bias)[0, ..., None]), size)[..., 0]
    u = torch.clamp(image, min=0.0) / scale
    u = u.pow_(params.gamma).mul_(bias).mul_(params.gain)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 62)))
    real = torch.randn(u.shape, generator=gen).mul_(params.noise_sigma).add_(u)
    imag = torch.randn(u.shape, generator=gen).mul_(params.noise_sigma)
    return torch.sqrt_(real.square_().add_(imag.square_())).mul_(scale)
