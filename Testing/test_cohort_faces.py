"""Random faces for the generated cohort: CC0 face shapes, carried onto the source heads, new people.

The face-recognizer checks (``facerec.DIFFERENT_PERSON_THRESHOLD``, calibrated in docs/cohort.md)
run on a small 128³ cohort; the two source heads' renders are compared in memory only.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from cpmae import cohort, faceshape, facerec, facewarp
from cpmae import cohort_augment as aug

GRID = 128


def test_random_faces_are_deterministic_and_differ():
    a, again, b = (faceshape.random_face_surface(s) for s in (3, 3, 4))
    assert np.array_equal(a.vertices, again.vertices) and a.params == again.params
    base = faceshape.base_surface()
    assert a.vertices.shape == base.vertices.shape and a.triangles.shape[1] == 3
    # the face (in front of the head joint, above the chin) changes by millimetres between seeds
    moved = np.linalg.norm(faceshape.normalise_to(a).vertices - faceshape.normalise_to(b).vertices, axis=1)
    face = base.vertices[:, 1] < base.vertices[:, 1].min() + 60.0
    assert np.median(moved[face]) > 2.0
    assert 20.0 <= a.params["age_years"] <= 80.0 and 0.0 <= a.params["male"] <= 1.0
    # the head is head-sized (mm) and looks towards -y (LPS)
    extent = np.ptp(base.vertices[~base.is_eye], axis=0)
    assert 120.0 < extent[1] < 300.0 and 150.0 < extent[2] < 350.0


def test_the_source_fit_is_read_back_from_disk_unchanged(monkeypatch):
    """Every remodel places its face by the averaged head's fit: read from the disk cache, not
    fitted again (0.6 s of each run), and equal to a fresh fit."""
    src = cohort.load_source(cohort.FACE_REFERENCE, GRID)
    fresh = facewarp.fit_head(cohort.head_mask(src.image), src.brain > 0, src.reference)
    cohort.source_fit(cohort.FACE_REFERENCE, GRID)  # written to disk if it was not there
    cohort._source_fit_cached.cache_clear()

    def no_fit(*a, **k):
        raise AssertionError("fitted again instead of read back")

    monkeypatch.setattr(facewarp, "fit_head", no_fit)
    read = cohort.source_fit(cohort.FACE_REFERENCE, GRID)
    cohort._source_fit_cached.cache_clear()  # no fit read under the patch outlives this test
    for name in ("points", "scale", "rotation", "translation", "residual_mm", "brain_centre"):
        assert np.array_equal(np.asarray(getattr(read, name)), np.asarray(getattr(fresh, name))), name


@pytest.mark.parametrize("name", cohort.SOURCES)
def test_base_face_fits_each_source_head(name):
    fit = cohort.source_fit(name, GRID)
    assert fit.residual_mm < 4.0, fit.residual_mm  # median distance of the fitted base face to the skin
    assert 0.7 < fit.scale < 1.3
    assert abs(np.linalg.det(fit.rotation) - 1.0) < 1e-6
    # the base head's nose tip lands in front of the brain
    placed = fit.place(faceshape.base_surface())
    assert placed[:, 1].min() < fit.brain_centre[1] - 60.0


def test_face_warp_carries_the_skin_onto_the_random_face():
    """With the global part off, the warped skin lies on the drawn face; the brain is untouched.

    The face is placed by the brain as at de-identification (``cohort.placed_face``, 4 mm forward
    of the averaged head's fit since cohort-4); subjects 1 and 2, one per source (0 and 3: 7.3 ->
    4.2 and 5.0 -> 2.9 mm)."""
    for index in (1, 2):
        warp, params, _, frame = cohort.draw_warp(index, GRID, seed=0, global_part=False, noise_part=False)
        src = cohort.load_source(params["source"], GRID)
        out = aug.apply_warp(frame.volumes, warp)
        assert np.array_equal((out[1] >= 0.75).numpy().astype(np.uint8), src.brain)
        face = faceshape.normalise_to(faceshape.random_face_surface(params["face"]["face_seed"]))
        target = cohort.placed_face(face, params["source"], GRID)  # placed by the brain, as at de-identification
        base = cohort.placed_face(faceshape.base_surface(), params["source"], GRID)
        rel = target - frame.fit.brain_centre
        # where the drawn face differs from the base face fitted to the source (nose, lips, chin, brows)
        changed = (rel[:, 1] < -70.0) & (rel[:, 2] > -80.0) & ~face.is_eye & \
            (np.linalg.norm(target - base, axis=1) > 4.0)
        assert changed.sum() > 100
        before = _surface_points(cohort.head_mask(src.image), src.reference)
        after = _surface_points((out[1] >= 0.25).numpy(), src.reference)
        d_before = np.median(cKDTree(before).query(target[changed])[0])
        d_after = np.median(cKDTree(after).query(target[changed])[0])
        assert d_after < 3.5, d_after  # under two voxels (2 mm) from the new face
        assert d_after < 0.75 * d_before, (d_before, d_after)  # measured 6.1 -> 2.6 mm (1), 5.0 -> 2.7 mm (2)
        assert warp.min_jacobian() > 0.05


def _surface_points(mask, reference):
    mask = np.asarray(mask) > 0
    skin = mask & ~ndimage.binary_erosion(mask)
    return facewarp.voxel_to_physical(reference, np.argwhere(skin).astype(float))


def test_face_velocity_is_exactly_zero_where_the_brain_weight_is():
    frame = cohort._source_frame(cohort.SOURCES[1], GRID, 2.0)
    face = faceshape.normalise_to(faceshape.random_face_surface(7))
    v, stats = facewarp.face_velocity(frame.fit, frame.fit.place(face), face.triangles, frame.nodes, frame.face_weight)
    assert v.shape == (3,) + (aug.FIELD_NODES,) * 3
    assert np.all(v[:, frame.face_weight == 0] == 0.0)
    # the weight is zero at every node on (or next to) the brain
    src = cohort.load_source(cohort.SOURCES[1], GRID)
    near_brain = ndimage.binary_dilation(src.brain > 0, iterations=2)
    idx = np.rint(np.argwhere(np.ones((aug.FIELD_NODES,) * 3, bool)) * (GRID - 1) / (aug.FIELD_NODES - 1)).astype(int)
    on_brain = near_brain[tuple(idx.T)].reshape((aug.FIELD_NODES,) * 3)
    assert on_brain.any() and np.all(frame.face_weight[on_brain] == 0.0)
    assert np.abs(v).max() > 5.0  # mm: the face really moves
    assert stats["face_match_median_mm"] < 2.5


@pytest.fixture(scope="module")
def embeddings():
    subs = {i: cohort.generate_subject(i, GRID, seed=0) for i in range(4)}
    emb = {i: cohort.face_embedding(s.image, s.reference) for i, s in subs.items()}
    src = {n: cohort.face_embedding(cohort.load_source(n, GRID).image, cohort.load_source(n, GRID).reference)
           for n in cohort.SOURCES}
    return emb, src


def test_generated_faces_are_new_people(embeddings):
    emb, src = embeddings
    thr = facerec.DIFFERENT_PERSON_THRESHOLD
    assert all(e is not None for e in emb.values()), "a generated face must still be found as a face"
    assert all(e is not None for e in src.values())
    for i, e in emb.items():
        for name, s in src.items():
            assert facerec.distance(e, s) > thr, (i, name, facerec.distance(e, s))
    for a, b in itertools.combinations(emb, 2):
        assert facerec.distance(emb[a], emb[b]) > thr, (a, b, facerec.distance(emb[a], emb[b]))


def test_identity_metric_separates_same_head_from_other_head(embeddings):
    """The metric itself: a re-render of the same head (3° turn) is closer than the threshold."""
    _, src = embeddings
    s = cohort.load_source(cohort.SOURCES[1], GRID)
    turned = cohort.face_embedding(s.image, s.reference, (0.0, 0.0, 3.0))
    assert facerec.distance(turned, src[cohort.SOURCES[1]]) < facerec.DIFFERENT_PERSON_THRESHOLD
    assert facerec.distance(src[cohort.SOURCES[0]], src[cohort.SOURCES[1]]) > facerec.DIFFERENT_PERSON_THRESHOLD


@pytest.mark.slow
def test_workers_write_the_same_cohort(tmp_path):
    import SimpleITK as sitk

    one = cohort.write_cohort(tmp_path / "one", 3, resolution=GRID, seed=2, workers=1)
    two = cohort.write_cohort(tmp_path / "two", 3, resolution=GRID, seed=2, workers=2)
    for r1, r2 in zip(one, two):
        for key in ("image", "mask"):
            a = sitk.GetArrayFromImage(sitk.ReadImage(r1[key]))
            b = sitk.GetArrayFromImage(sitk.ReadImage(r2[key]))
            assert np.array_equal(a, b), (r1["subject"], key)


def test_place_face_follows_the_brain():
    """The model team's face-shape condition: a face placed by brain centre and size only."""
    name = "pydeface-mean"
    fit = cohort.source_fit(name, GRID)
    size = cohort.source_brain_size_mm(name, GRID)
    face = faceshape.normalise_to(faceshape.random_face_surface(11))
    at_home = facewarp.place_face(face, fit.brain_centre, size, fit, size)
    np.testing.assert_allclose(at_home, fit.place(face), atol=1e-6)  # on the averaged head: its own fit
    moved = facewarp.place_face(face, fit.brain_centre + np.array([0.0, 0.0, 10.0]), 1.1 * size, fit, size)
    rel_home, rel_moved = at_home - fit.brain_centre, moved - fit.brain_centre - np.array([0.0, 0.0, 10.0])
    np.testing.assert_allclose(rel_moved, 1.1 * rel_home, atol=1e-6)
    # the one placement rule of de-identification and the cohort: FACE_MARGIN_MM forward (LPS -y)
    forward = cohort.place_by_brain(face, fit.brain_centre, size)
    np.testing.assert_allclose(forward, at_home - np.array([0.0, cohort.FACE_MARGIN_MM, 0.0]), atol=1e-6)
    np.testing.assert_allclose(cohort.placed_face(face, name, GRID), forward, atol=1e-6)  # no affine: the same
    src = cohort.load_source(name, GRID)
    vox = cohort.random_face_voxels(11, src.brain, src.reference)
    assert vox.shape[1] == 3 and len(vox) > 1000
    brain_front = np.nonzero(src.brain.any(axis=(0, 2)))[0].min()
    assert vox[:, 1].max() < brain_front  # only the face, in front of the brain (low y)
    inside = np.all((vox > -1) & (vox < GRID), axis=1)
    assert inside.mean() > 0.9, inside.mean()  # the head fits in the model grid (the neck may leave it)
    # turned with a brain (de-identification, cpmae.conform.brain_rotation): about the brain's centroid
    upright, triangles = cohort.placed_face_mesh(11, src.brain, src.reference)
    a = np.deg2rad(12.0)
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    turned, same = cohort.placed_face_mesh(11, src.brain, src.reference, pitch)
    assert np.array_equal(triangles, same)
    to_mm = lambda v: facewarp.voxel_to_physical(src.reference, v)  # noqa: E731
    centre = facewarp.voxel_to_physical(src.reference, np.argwhere(src.brain > 0).mean(axis=0)[None])[0]
    np.testing.assert_allclose(to_mm(turned) - centre, (to_mm(upright) - centre) @ pitch.T, atol=1e-6)
    assert np.abs(to_mm(turned) - to_mm(upright)).max() > 10.0


def test_cli_bad_worker_count_is_one_line_and_writes_nothing(capsys, tmp_path):
    from cpmae.cli import main

    out = tmp_path / "c"
    assert main(["generate-cohort", str(out), "--n", "2", "--workers", "0", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers" in err[0]
    assert not out.exists()


def test_outer_shell_keeps_the_skin_and_drops_what_is_inside():
    """A face-shape map must show only outer skin: the mesh's mouth bag and eye sockets lie inside
    the head, and the raw vertices are sparser than the grid (gaps). A closed box (bottom open, as
    a head mesh ends at the neck) with a triangle inside: the box's walls and top come out without
    gaps, the inside triangle does not, and nothing is seen through the open bottom."""
    corners = np.array([[z, y, x] for z in (4, 20) for y in (4, 20) for x in (4, 20)], float)

    def quad(a, b, c, d):
        return [[a, b, c], [a, c, d]]

    # corner index = 4*(z==20) + 2*(y==20) + (x==20)
    tris = quad(4, 5, 7, 6) + quad(0, 1, 5, 4) + quad(2, 3, 7, 6) + quad(0, 2, 6, 4) + quad(1, 3, 7, 5)  # no bottom
    verts = np.concatenate([corners, [[10, 10, 8], [10, 10, 16], [16, 10, 12]]])  # an inside triangle
    tris = np.array(tris + [[8, 9, 10]])
    shell = cohort.outer_shell(verts, tris, (24, 24, 24))
    assert shell[20, 4:21, 4:21].all()  # the top, no gaps
    assert shell[5:20, 4, 5:20].all() and shell[5:20, 20, 5:20].all()  # front and back walls
    assert not shell[6:19, 6:19, 6:19].any()  # nothing inside: the inner triangle is hidden
    assert not shell[:4].any()
