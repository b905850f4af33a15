"""The head mask and CP-GAN's convex-hull head envelope on small synthetic heads."""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, Delaunay

from cpmae import envelope
from cpmae.errors import InputError
from phantoms import phantom_arrays


@pytest.fixture(scope="module")
def head():
    """A 48³ phantom head (float32) with a little noise in the air."""
    arr, _ = phantom_arrays(48, seed=1)
    rng = np.random.default_rng(2)
    return arr + rng.uniform(0, 20, arr.shape).astype(np.float32)


def test_threshold_separates_air_from_skin(head):
    thr = envelope.foreground_threshold(head)
    assert 20 < thr < 600  # above air noise (< 20), below skin (~600)


def test_envelope_contains_the_head(head):
    mask = envelope.head_mask(head)
    env = envelope.head_envelope(head, (4.0, 4.0, 4.0))
    assert mask.sum() > 0.1 * mask.size
    assert not (mask & ~env).any()
    assert env.sum() > mask.sum()  # the hull bridges the concavities under nose and chin


def test_envelope_excludes_far_corners(head):
    env = envelope.head_envelope(head, (4.0, 4.0, 4.0))
    for corner in np.ndindex(2, 2, 2):
        idx = tuple(c * (n - 1) for c, n in zip(corner, env.shape))
        assert not env[idx]
    assert env.mean() < 0.6


def test_hull_of_hull_is_hull(head):
    env = envelope.head_envelope(head, (4.0, 4.0, 4.0))
    assert np.array_equal(envelope.hull_of_mask(env), env)


def test_envelope_is_convex(head):
    """Midpoints of random pairs of envelope voxels stay inside (up to rounding to a voxel)."""
    env = envelope.head_envelope(head, (4.0, 4.0, 4.0))
    pts = np.argwhere(env)
    rng = np.random.default_rng(0)
    a, b = pts[rng.integers(len(pts), size=2000)], pts[rng.integers(len(pts), size=2000)]
    mid = (a + b) / 2.0
    near = np.stack([np.floor(mid), np.ceil(mid)])  # either rounding of a midpoint may be on the grid
    inside = env[tuple(near[0].astype(int).T)] | env[tuple(near[1].astype(int).T)]
    assert inside.all()


def test_hull_matches_brute_force_on_random_blob():
    """Row-interval filling equals a point-in-hull test on every voxel centre."""
    rng = np.random.default_rng(3)
    mask = ndi.gaussian_filter(rng.random((20, 24, 28)), 2.5) > 0.505
    mask = envelope.largest_component(mask)
    hull = envelope.hull_of_mask(mask)
    points = np.argwhere(mask).astype(float)
    tri = Delaunay(points[ConvexHull(points).vertices])  # hull vertices only: fast point location
    grid = np.argwhere(np.ones(mask.shape, bool)).astype(float)
    brute = (tri.find_simplex(grid, tol=1e-6) >= 0).reshape(mask.shape)
    assert mask.sum() > 500
    assert np.array_equal(hull, brute)


def test_degenerate_and_empty_masks():
    empty = np.zeros((8, 8, 8), bool)
    assert not envelope.hull_of_mask(empty).any()
    plane = empty.copy()
    plane[4, 2:6, 1:7] = True
    assert np.array_equal(envelope.hull_of_mask(plane), plane)  # a flat patch is its own hull


def test_head_mask_drops_specks_and_fills_cavities(head):
    arr = head.copy()
    arr[2:4, 2:4, 2:4] = 1000.0  # a bright speck in a corner, far from the head
    c = arr.shape[0] // 2
    arr[c - 3:c + 3, c - 3:c + 3, c - 3:c + 3] = 0.0  # an enclosed dark cavity inside the brain
    mask = envelope.head_mask(arr)
    assert not mask[2:4, 2:4, 2:4].any()
    assert mask[c - 3:c + 3, c - 3:c + 3, c - 3:c + 3].all()


def test_fill_holes_equals_scipy():
    rng = np.random.default_rng(4)
    mask = ndi.gaussian_filter(rng.random((30, 31, 32)), 1.5) > 0.5
    assert np.array_equal(envelope.fill_holes(mask), ndi.binary_fill_holes(mask))


def test_explicit_threshold_is_used(head):
    low = envelope.head_mask(head, threshold=100.0)
    high = envelope.head_mask(head, threshold=500.0)
    assert high.sum() < low.sum()


def test_bad_input_is_an_input_error():
    with pytest.raises(InputError):
        envelope.head_envelope(np.zeros((8, 8)), (1.0, 1.0))
    with pytest.raises(InputError):
        envelope.head_envelope(np.zeros((8, 8, 8)), (1.0, 0.0, 1.0))


@pytest.mark.slow
@pytest.mark.parametrize("size,limit_s", [(128, 1.0), (256, 3.0)])
def test_envelope_speed(size, limit_s):
    arr, _ = phantom_arrays(size, seed=0)
    envelope.head_envelope(arr[::4, ::4, ::4], (1.0, 1.0, 1.0))  # warm-up (imports, qhull)
    start = time.perf_counter()
    env = envelope.head_envelope(arr, (256.0 / size,) * 3)
    elapsed = time.perf_counter() - start
    assert env.any()
    assert elapsed < limit_s, f"{size}³ envelope took {elapsed:.2f} s"
