"""Re-identification attack: a Siamese embedding network and the papers' scoring.

The attacker (CP-GAN §4 / CP-MAE §4, "model-based study") embeds a face rendering so that
renderings of the same person are close and of different people far apart. It is trained
with a triplet margin loss on subjects *disjoint* from the evaluated ones, then asked, for
each evaluated subject, which of five de-identified renderings (one of the same subject,
four of others, all from the same method) belongs to the original rendering. A method
that hides identity drives that rate to chance (20 %).

Inputs are stacks of grey renderings ``[N, V, H, W]`` (``V`` views as channels, uint8 or
float in [0, 1]); nothing here knows about volumes, so the module is testable on any images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

N_OPTIONS = 5  # the papers' protocol: the correct rendering plus four of other subjects
TIE_TOLERANCE = 1e-5  # embeddings are unit vectors: closer than this counts as a tie


# ----------------------------------------------------------------------------- network
class _BasicBlock(nn.Module):
    """ResNet basic block (two 3×3 convs + identity/projection shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class EmbeddingNet(nn.Module):
    """A small ResNet (one block per stage) mapping ``[B, V, H, W]`` to unit vectors.

    Plain torch because there is no CPU torchvision here; ~0.7 M parameters so that it
    trains in minutes on two CPU cores at 160 px.
    """

    def __init__(self, in_channels: int = 2, widths: Sequence[int] = (16, 32, 64, 128), dim: int = 64):
        super().__init__()
        self.config = {"in_channels": int(in_channels), "widths": [int(w) for w in widths], "dim": int(dim)}
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 5, 2, 2, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks, c = [], widths[0]
        for w in widths:
            blocks.append(_BasicBlock(c, w, 2))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.stem(x))
        y = y.mean(dim=(2, 3))
        return F.normalize(self.head(y), dim=1)


def to_tensor(renders: np.ndarray) -> torch.Tensor:
    """uint8 or float ``[N, V, H, W]`` renderings -> float tensor in [0, 1]."""
    arr = np.asarray(renders)
    if arr.ndim != 4:
        raise ValueError(f"renderings must be [N, V, H, W], got shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr)).float()
    return t / 255.0 if arr.dtype == np.uint8 else t


# ----------------------------------------------------------------------- augmentation
def augment_batch(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Photometric and small geometric jitter, the same for all views of one sample.

    Stands in for a different photograph of the same person: shifted/rescaled framing,
    other exposure and contrast, sensor noise. ``strength`` 0 returns ``x`` unchanged.
    """
    if strength <= 0:
        return x
    b = x.shape[0]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(b, *shape, generator=generator)

    s = strength
    scale = 1.0 + u(-0.06 * s, 0.06 * s)
    angle = u(-0.06 * s, 0.06 * s)  # radians (≈ ±3.4°)
    shift = u(-0.05 * s, 0.05 * s, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = u(1 - 0.25 * s, 1 + 0.25 * s, 1, 1, 1)
    gamma = torch.exp(u(-0.3 * s, 0.3 * s, 1, 1, 1))
    y = y.clamp(0, 1) ** gamma * gain
    y = y + 0.02 * s * torch.randn(y.shape, generator=generator)
    return y.clamp(0, 1)


# --------------------------------------------------------------------------- training
@dataclass
class TrainSettings:
    """How the attacker is trained (defaults sized for 2 CPU cores at 160 px)."""

    steps: int = 300
    subjects_per_batch: int = 8
    samples_per_subject: int = 3
    margin: float = 0.3
    lr: float = 2e-3
    augment: float = 1.0
    seed: int = 0
    threads: Optional[int] = None


@dataclass
class TrainLog:
    losses: List[float] = field(default_factory=list)
    seconds: float = 0.0


def _batch_hard_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Triplet margin loss with the hardest positive and negative of each anchor in the batch."""
    d = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    hardest_pos = (d * (same & ~eye)).max(dim=1).values
    hardest_neg = d.masked_fill(same, float("inf")).min(dim=1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def train_attacker(groups: Sequence[np.ndarray], settings: TrainSettings = TrainSettings(),
                   reporter=None, net: Optional[EmbeddingNet] = None) -> tuple:
    """Train an :class:`EmbeddingNet` on renderings grouped by subject.

    ``groups[i]`` is ``[n_i, V, H, W]``: renderings of training subject ``i`` under different
    volume/render jitter (index 0 = the canonical rendering). Each step draws P subjects × K
    renderings, augments them in 2D, and applies a batch-hard triplet loss. Returns
    ``(net in eval mode, TrainLog)``.
    """
    import time

    if len(groups) < 2:
        raise ValueError("the attacker needs at least two training subjects")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    g = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    data = [to_tensor(x) for x in groups]
    n_views = data[0].shape[1]
    net = net or EmbeddingNet(in_channels=n_views)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.15)
    p = min(settings.subjects_per_batch, len(data))
    k = settings.samples_per_subject
    log, t0 = TrainLog(), time.perf_counter()
    net.train()
    stage_cm = reporter.stage("attacker training", settings.steps) if reporter is not None else None
    stage = stage_cm.__enter__() if stage_cm is not None else None
    try:
        for _ in range(settings.steps):
            subj = torch.randperm(len(data), generator=g)[:p].tolist()
            xs, labels = [], []
            for s in subj:
                idx = torch.randint(0, data[s].shape[0], (k,), generator=g)
                idx[0] = 0  # always include the canonical rendering: it is what queries look like
                xs.append(data[s][idx])
                labels += [s] * k
            x = augment_batch(torch.cat(xs), g, settings.augment)
            loss = _batch_hard_triplet(net(x), torch.tensor(labels), settings.margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            log.losses.append(float(loss.detach()))
            if stage is not None:
                stage.advance()
    finally:
        if stage_cm is not None:
            stage_cm.__exit__(None, None, None)
    log.seconds = time.perf_counter() - t0
    return net.eval(), log


@torch.no_grad()
def embed(net: EmbeddingNet, renders: np.ndarray, batch: int = 64) -> np.ndarray:
    """Unit-vector embeddings ``[N, D]`` (float64) of renderings ``[N, V, H, W]``."""
    net.eval()
    x = to_tensor(renders)
    out = [net(x[i:i + batch]) for i in range(0, len(x), batch)]
    return torch.cat(out).double().numpy()


# ---------------------------------------------------------------------------- scoring
def distance_matrix(queries: np.ndarray, options: np.ndarray) -> np.ndarray:
    """Euclidean distances ``d[i, j]`` from query ``i`` to option ``j``."""
    q, o = np.asarray(queries, np.float64), np.asarray(options, np.float64)
    d2 = (q ** 2).sum(1)[:, None] + (o ** 2).sum(1)[None, :] - 2 * q @ o.T
    return np.sqrt(np.clip(d2, 0, None))


def _pick_nearest(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index of the nearest option per row; exact ties (within tolerance) broken at random.

    Ties matter: BLACK gives every option the same rendering, and a deterministic argmin
    would always pick the first option instead of guessing.
    """
    near = d <= d.min(axis=1, keepdims=True) + TIE_TOLERANCE
    noise = rng.random(d.shape)
    return np.argmax(np.where(near, noise, -1.0), axis=1)


def identification_trials(d: np.ndarray, subjects: np.ndarray, rng: np.random.Generator,
                          n_options: int = N_OPTIONS) -> np.ndarray:
    """Run one 5-way trial per entry of ``subjects`` (indices into ``d``); True where correct.

    The options are the query subject's de-identified rendering plus ``n_options - 1``
    renderings of distinct other evaluated subjects, in random order.
    """
    n = d.shape[0]
    if n < n_options:
        raise ValueError(f"a {n_options}-way identification needs at least {n_options} subjects, got {n}")
    subjects = np.asarray(subjects, dtype=np.int64)
    t = len(subjects)
    keys = rng.random((t, n))
    keys[np.arange(t), subjects] = 2.0  # never a distractor of itself
    others = np.argpartition(keys, n_options - 2, axis=1)[:, : n_options - 1]  # a random subset of the rest
    opts = np.concatenate([subjects[:, None], others], axis=1)
    opts = np.take_along_axis(opts, np.argsort(rng.random(opts.shape), axis=1), axis=1)  # random order
    dist = d[subjects[:, None], opts]
    chosen = opts[np.arange(t), _pick_nearest(dist, rng)]
    return chosen == subjects


@dataclass
class IdentificationResult:
    mean: float  # identification rate in percent, averaged over folds
    sd: float  # standard deviation over bootstrap folds, percent
    folds: int
    n_subjects: int
    chance: float = 100.0 / N_OPTIONS
    lo: float = float("nan")  # 95 % bootstrap interval over subjects (percentiles of the folds), percent
    hi: float = float("nan")


def identification_rate(d: np.ndarray, folds: int = 1000, seed: int = 0,
                        n_options: int = N_OPTIONS) -> IdentificationResult:
    """Identification rate (%) as mean ± s.d. over bootstrap folds of the evaluated subjects.

    Each fold resamples the subjects with replacement and runs one trial per drawn subject,
    with fresh distractors, as in the papers' bootstrap over 1000 resamples.
    """
    rng = np.random.default_rng(seed)
    n = d.shape[0]
    rates = np.empty(folds)
    chunk = max(1, 1_000_000 // max(1, n * n))  # folds per vectorised batch (~8 MB of keys)
    for start in range(0, folds, chunk):
        k = min(chunk, folds - start)
        subjects = rng.integers(0, n, size=(k, n))
        correct = identification_trials(d, subjects.ravel(), rng, n_options).reshape(k, n)
        rates[start:start + k] = correct.mean(axis=1) * 100.0
    lo, hi = np.percentile(rates, [2.5, 97.5])
    return IdentificationResult(float(rates.mean()), float(rates.std(ddof=1) if folds > 1 else 0.0), folds, n,
                                lo=float(lo), hi=float(hi))


def retrieval_ranks(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relative rank α ∈ [0, 1] of each query's correct option among all options.

    0 = the correct rendering is nearest (ORIGINAL), uniform on [0, 1] = no information
    (BLACK); ties take a uniformly random place among themselves.
    """
    n = d.shape[0]
    if n < 2:
        raise ValueError("retrieval needs at least two subjects")
    correct = np.diag(d)[:, None]
    closer = (d < correct - TIE_TOLERANCE).sum(1)
    tied = (np.abs(d - correct) <= TIE_TOLERANCE).sum(1) - 1  # the correct option itself excluded
    rank = closer + np.floor(rng.random(n) * (tied + 1))
    return rank / (n - 1)


def retrieval_curve(d: np.ndarray, alphas: Optional[np.ndarray] = None, folds: int = 1000,
                    seed: int = 0) -> Dict[str, list]:
    """P(correct option within the top α ranks) with a 95 % band over bootstrap folds (CP-GAN Fig. 4)."""
    rng = np.random.default_rng(seed)
    alphas = np.linspace(0, 1, 21) if alphas is None else np.asarray(alphas, float)
    n = d.shape[0]
    curves = np.empty((folds, len(alphas)))
    for f in range(folds):
        ranks = retrieval_ranks(d, rng)[rng.integers(0, n, size=n)]
        curves[f] = (ranks[:, None] <= alphas[None, :] + 1e-12).mean(0)
    return {
        "alpha": alphas.tolist(),
        "mean": curves.mean(0).tolist(),
        "lo": np.percentile(curves, 2.5, axis=0).tolist(),
        "hi": np.percentile(curves, 97.5, axis=0).tolist(),
    }
