"""The face recognizer finds the averaged head's rendered face, not a blank picture, and its embedding is stable."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from cpmae import facerec
from cpmae.render import render_views
from cpmae.samples import ensure_sample


@pytest.fixture(scope="module")
def mean_head_views():
    img = sitk.ReadImage(str(ensure_sample("pydeface-mean")))
    return render_views(img, ("frontal", "profile"), size=(320, 320))


def test_models_are_found_without_importing_their_package():
    folder = facerec.models_dir()
    assert (folder / facerec.LANDMARKS_FILE).is_file()
    assert (folder / facerec.EMBEDDING_FILE).is_file()


def test_face_found_in_frontal_render_and_not_in_blank(mean_head_views):
    rec = facerec.recognizer()
    assert rec.detect(mean_head_views["frontal"])
    assert not rec.detect(np.zeros_like(mean_head_views["frontal"]))


def test_embedding_is_deterministic_and_unit_scale(mean_head_views):
    rec = facerec.recognizer()
    a = rec.embed(mean_head_views["frontal"])
    b = rec.embed(mean_head_views["frontal"].copy())
    assert a is not None and a.shape == (128,)
    assert facerec.distance(a, b) < 1e-6
    assert 0.5 < np.linalg.norm(a) < 1.5  # dlib embeddings are about unit length
    assert rec.embed(np.zeros_like(mean_head_views["frontal"])) is None


def test_distance_matrix_matches_pairwise():
    rng = np.random.default_rng(0)
    q, o = rng.normal(size=(3, 128)), rng.normal(size=(4, 128))
    d = facerec.distance_matrix(q, o)
    assert d.shape == (3, 4)
    assert np.isclose(d[1, 2], facerec.distance(q[1], o[2]))


def test_the_cached_detector_finds_what_dlibs_built_in_one_finds(mean_head_views, tmp_path, monkeypatch):
    import dlib

    monkeypatch.setenv("CPMAE_CACHE", str(tmp_path))
    built_in = dlib.get_frontal_face_detector()
    first = facerec.frontal_detector(dlib)  # builds and saves
    path = facerec.detector_cache_path(dlib)
    assert path.is_file() and path.is_relative_to(tmp_path)
    cached = facerec.frontal_detector(dlib)  # reads the file
    for picture in (mean_head_views["frontal"], mean_head_views["profile"]):
        want = built_in.run(picture, facerec.UPSAMPLE, 0.0)
        for det in (first, cached):
            got = det.run(picture, facerec.UPSAMPLE, 0.0)
            assert [str(r) for r in got[0]] == [str(r) for r in want[0]] and list(got[1]) == list(want[1])
    assert len(built_in.run(mean_head_views["frontal"], facerec.UPSAMPLE, 0.0)[0]) == 1  # a face to compare on
    path.write_bytes(b"not a detector")  # damaged: rebuilt, and the file mended
    again = facerec.frontal_detector(dlib)
    assert len(again.run(mean_head_views["frontal"], facerec.UPSAMPLE, 0.0)[0]) == 1
    assert path.stat().st_size > 1000
