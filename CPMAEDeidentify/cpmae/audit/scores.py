"""Distances for the attackers that need no training, and interval estimates for rates.

- **Face recognizer** (``cpmae.facerec``, dlib's ResNet embedding): Euclidean distance between
  the embeddings of two frontal pictures. A picture in which no face is found cannot be matched:
  its distance to everything is the same large value, so the 5-way trial guesses among such
  options (and a query without a face guesses among all five).
- **Silhouette**: 1 − Dice of two heads' silhouettes (in the brain frame, whole frame or face
  region): the attacker who only sees outlines (CP-GAN's "head size remains" cue).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

NO_FACE_DISTANCE = 10.0  # dlib embedding distances are < 2: this means "no match possible"


def face_distance_matrix(queries: np.ndarray, options: np.ndarray) -> np.ndarray:
    """[n, m] embedding distances; rows/columns of pictures without a face (NaN) get ``NO_FACE_DISTANCE``."""
    q = np.asarray(queries, np.float64)
    o = np.asarray(options, np.float64)
    d = np.sqrt(np.maximum(((np.nan_to_num(q)[:, None, :] - np.nan_to_num(o)[None, :, :]) ** 2).sum(-1), 0.0))
    missing = np.isnan(q).any(1)[:, None] | np.isnan(o).any(1)[None, :]
    return np.where(missing, NO_FACE_DISTANCE, d)


def silhouette_distance_matrix(queries: np.ndarray, options: np.ndarray) -> np.ndarray:
    """[n, m] 1 − Dice between boolean silhouettes ``[n, ...]`` and ``[m, ...]`` (both empty: 0)."""
    q = np.asarray(queries, bool).reshape(len(queries), -1).astype(np.float32)
    o = np.asarray(options, bool).reshape(len(options), -1).astype(np.float32)
    inter = q @ o.T
    total = q.sum(1)[:, None] + o.sum(1)[None, :]
    dice = np.where(total > 0, 2.0 * inter / np.maximum(total, 1.0), 1.0)
    return 1.0 - dice.astype(np.float64)


def wilson_interval(k: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n (as fractions); (nan, nan) when n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
