"""Offscreen face renderings: non-empty, deterministic, oriented, and blind to scan orientation."""
from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from cpmae import render
from cpmae.cli import main as cli_main
from cpmae.errors import OutputError
from phantoms import phantom_arrays, phantom_image

SIZE = (128, 128)  # small pictures keep the suite fast; the cameras do not depend on size


def _image(arr: np.ndarray, spacing: float = 4.0, direction=None, origin=None) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((spacing,) * 3)
    n = arr.shape[0]
    img.SetOrigin(origin if origin is not None else (-(n - 1) * spacing / 2.0,) * 3)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _with_blob(arr: np.ndarray, centre_zyx, radius: float = 4.0, value: float = 600.0) -> np.ndarray:
    """Phantom plus a bright ball at fractional position ``centre_zyx`` (0..1 along [z, y, x])."""
    out = arr.copy()
    idx = np.indices(arr.shape).astype(np.float32)
    c = [f * (n - 1) for f, n in zip(centre_zyx, arr.shape)]
    out[sum((idx[i] - c[i]) ** 2 for i in range(3)) <= radius ** 2] = value
    return out


def _head_pixels(picture: np.ndarray) -> np.ndarray:
    return picture.max(axis=2) > 0


@pytest.fixture(scope="module")
def head_arr():
    return phantom_arrays(64, seed=0)[0]


@pytest.fixture(scope="module")
def views(head_arr):
    return render.render_views(_image(head_arr), size=SIZE)


def test_rendering_shows_a_head_on_background(views):
    for view, picture in views.items():
        assert picture.shape == (SIZE[1], SIZE[0], 3) and picture.dtype == np.uint8
        head = _head_pixels(picture)
        assert 0.15 < head.mean() < 0.8, view
        assert not head[0, 0] and not head[-1, -1]  # corners are background
        assert picture[head].mean() > 60  # lit skin, not a black silhouette


def test_rendering_is_deterministic(head_arr, views):
    again = render.render_views(_image(head_arr), size=SIZE)
    for view in views:
        assert np.array_equal(again[view], views[view])


def test_frontal_differs_from_profile(views):
    diff = np.abs(views["frontal"].astype(int) - views["profile"].astype(int)).max(axis=2)
    assert (diff > 30).mean() > 0.05


def test_bigger_nose_changes_the_face_region_only():
    small_img = phantom_image(nose=0.3)[0]
    centre = render.camera_centre(small_img)  # the pair shares one camera, as before/after do
    small = render.render_views(small_img, size=SIZE, centre=centre)
    big = render.render_views(phantom_image(nose=2.5)[0], size=SIZE, centre=centre)
    # profile: the face points to the image's right; the nose adds head pixels there, not at the back
    grown = _head_pixels(big["profile"]) & ~_head_pixels(small["profile"])
    w = SIZE[0]
    assert grown[:, w // 2:].sum() > 10
    assert grown[:, : w // 3].sum() == 0
    # frontal: the shading changes in the middle of the face, not on the skull top
    diff = np.abs(big["frontal"].astype(int) - small["frontal"].astype(int)).max(axis=2) > 20
    h = SIZE[1]
    assert diff[h // 3:, w // 3: 2 * w // 3].sum() > 10
    assert diff[: h // 5].sum() == 0


def test_subjects_left_is_on_the_image_right_and_superior_is_up(head_arr):
    centre = render.camera_centre(_image(head_arr))
    base = render.render_views(_image(head_arr), size=SIZE, centre=centre)
    # LPS: +x is the subject's left, +z superior; array index order is [z, y, x]
    left_ear = render.render_face(_image(_with_blob(head_arr, (0.5, 0.5, 0.83))), "frontal", SIZE, centre=centre)
    grown = _head_pixels(left_ear) & ~_head_pixels(base["frontal"])
    assert grown[:, SIZE[0] // 2:].sum() > 5 and grown[:, : SIZE[0] // 2].sum() == 0
    top = render.render_face(_image(_with_blob(head_arr, (0.95, 0.5, 0.5))), "profile", SIZE, centre=centre)
    grown = _head_pixels(top) & ~_head_pixels(base["profile"])
    assert grown[: SIZE[1] // 2].sum() > 5 and grown[SIZE[1] // 2:].sum() == 0


def _reoriented(img: sitk.Image, direction: np.ndarray, spacing: float, interp=sitk.sitkNearestNeighbor):
    """The same physical head stored on a grid with another direction matrix."""
    n = img.GetSize()[0] * img.GetSpacing()[0] / spacing
    n = int(round(n))
    centre = np.asarray(img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in img.GetSize()]))
    ref = sitk.Image([n] * 3, sitk.sitkFloat32)
    ref.SetSpacing((spacing,) * 3)
    ref.SetDirection(direction.ravel().tolist())
    ref.SetOrigin((centre - direction @ np.full(3, (n - 1) * spacing / 2.0)).tolist())
    return sitk.Resample(img, ref, sitk.Transform(), interp, 0.0, sitk.sitkFloat32)


def test_flipped_and_permuted_storage_gives_the_same_frontal_view(head_arr, views):
    # RAS-like storage with the array's axes permuted: columns run -y, +z, -x
    direction = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], dtype=float)
    stored = _reoriented(_image(head_arr), direction, 4.0)
    assert not np.allclose(stored.GetDirection(), np.eye(3).ravel())
    again = render.render_face(stored, "frontal", SIZE)
    diff = np.abs(again.astype(int) - views["frontal"].astype(int))
    assert diff.mean() < 1.0


def test_oblique_storage_gives_nearly_the_same_frontal_view(head_arr, views):
    a = np.deg2rad(25.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    stored = _reoriented(_image(head_arr), rot, 3.0, sitk.sitkLinear)
    again = render.render_face(stored, "frontal", SIZE)
    a_head, b_head = _head_pixels(again), _head_pixels(views["frontal"])
    iou = (a_head & b_head).sum() / (a_head | b_head).sum()
    assert iou > 0.95
    assert np.abs(again.astype(int) - views["frontal"].astype(int)).mean() < 12


def test_array_and_spacing_pair_matches_the_image(head_arr, views):
    picture = render.render_face((head_arr, (4.0, 4.0, 4.0)), "frontal", SIZE)
    assert np.array_equal(picture, views["frontal"])


def test_camera_keeps_the_vertex_of_a_tall_scan_in_view():
    """A head on a long neck: the top of the head stays in the picture, the neck is cropped."""
    arr, _ = phantom_arrays(64, seed=0)
    neck = np.zeros((40, 64, 64), np.float32)
    yy, xx = np.mgrid[:64, :64]
    neck[:, ((yy - 36) ** 2 + (xx - 32) ** 2) < 12 ** 2] = 600.0
    tall = np.concatenate([neck, arr])  # 104 x 4 mm = 416 mm of scan, the neck below the head
    tall[:60] = np.maximum(tall[:60], np.concatenate([neck, neck[:20]]))  # the neck joins the head
    picture = render.render_face((tall, (4.0, 4.0, 4.0)), "profile", SIZE)
    head = _head_pixels(picture)
    rows = np.nonzero(head.any(axis=1))[0]
    assert rows[0] > 0  # air above the vertex: the head top is not cut
    assert rows[-1] == SIZE[1] - 1  # the neck runs out of the bottom of the picture


def test_fov_centre_is_the_middle_of_the_scan():
    img = _image(np.zeros((10, 12, 14), np.float32), spacing=2.0, origin=(5.0, -3.0, 1.0))
    assert np.allclose(render.fov_centre(img), (5.0 + 13.0, -3.0 + 11.0, 1.0 + 9.0))


def test_empty_volume_renders_background():
    picture = render.render_face((np.zeros((16, 16, 16), np.float32), (4.0, 4.0, 4.0)), "frontal", SIZE)
    assert picture.max() == 0


def test_unknown_view_is_refused(head_arr):
    with pytest.raises(ValueError):
        render.render_face(_image(head_arr), "top")


def test_save_png_round_trip_and_no_leftovers(tmp_path, views):
    path = render.save_png(views["frontal"], tmp_path / "sub" / "f.png")
    assert np.array_equal(np.asarray(Image.open(path)), views["frontal"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.png"]
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(OutputError):
        render.save_png(views["frontal"], blocker / "f.png")


def test_before_after_figure(tmp_path, head_arr):
    before = _image(head_arr)
    after = _image(_with_blob(head_arr, (0.45, 0.1, 0.5), radius=5))  # a growth on the face
    written = render.before_after_figure(before, after, tmp_path / "face.png", size=SIZE, singles=True)
    assert written[0] == tmp_path / "face.png" and len(written) == 5
    grid = np.asarray(Image.open(written[0]))
    assert grid.shape[0] > 2 * SIZE[1] and grid.shape[1] == 2 * SIZE[0]
    frontal_before = np.asarray(Image.open(tmp_path / "face_before_frontal.png"))
    frontal_after = np.asarray(Image.open(tmp_path / "face_after_frontal.png"))
    assert not np.array_equal(frontal_before, frontal_after)
    with pytest.raises(ValueError):
        render.before_after_figure(before, after, tmp_path / "x.png", labels=("a", "a"))


def test_cli_render_and_compare(tmp_path, capsys):
    img, _ = phantom_image()
    other, _ = phantom_image(nose=2.5)
    sitk.WriteImage(img, str(tmp_path / "head.nii.gz"))
    sitk.WriteImage(other, str(tmp_path / "remodeled.nii.gz"))
    out = tmp_path / "pngs"
    rc = cli_main(["render", str(tmp_path / "head.nii.gz"), str(out), "--views", "frontal",
                   "--compare", str(tmp_path / "remodeled.nii.gz"), "--size", "96"])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["head_frontal.png", "head_vs_remodeled.png"]
    assert np.asarray(Image.open(out / "head_frontal.png")).shape == (96, 96, 3)
    assert cli_main(["render", str(tmp_path / "head.nii.gz"), str(out), "--views", "top"]) == 2
    assert cli_main(["render", str(tmp_path / "missing.nii.gz"), str(out)]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err


@pytest.mark.slow
def test_render_speed_at_128_cubed(mean_head):
    """< 1 s per view for a 128³ volume at 2 mm (the audit renders hundreds of faces)."""
    img = sitk.ReadImage(str(mean_head))
    ref = sitk.Image([128] * 3, sitk.sitkFloat32)
    ref.SetSpacing((2.0,) * 3)
    ref.SetOrigin((render.camera_centre(img) - 127.0).tolist())
    model = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    render.render_face(model)  # warm-up: the first call creates the window
    start = time.perf_counter()
    pictures = render.render_views(model, size=(320, 320))
    per_view = (time.perf_counter() - start) / len(pictures)
    assert per_view < 1.0, f"{per_view:.2f} s per view"


def test_headless_backend_choice():
    libs = {"EGL": "libEGL.so.1", "OSMesa": "libOSMesa.so.8"}
    find_all = libs.get
    assert render.headless_backend({}, "linux", find_all) == "vtkEGLRenderWindow"
    assert render.headless_backend({}, "linux", {"OSMesa": "x"}.get) == "vtkOSMesaRenderWindow"
    assert render.headless_backend({"DISPLAY": ":0"}, "linux", find_all) is None
    assert render.headless_backend({"VTK_DEFAULT_OPENGL_WINDOW": "vtkXOpenGLRenderWindow"}, "linux", find_all) is None
    assert render.headless_backend({}, "darwin", find_all) is None
    with pytest.raises(OutputError, match="libEGL"):
        render.headless_backend({}, "linux", lambda name: None)


@pytest.mark.skipif(render._has_library("OSMesa"), reason="OSMesa is installed: forcing it would work")
def test_missing_backend_is_one_line_not_a_crash(tmp_path):
    """Forcing OSMesa where it is absent made VTK segfault; now it is exit code 3 and one line."""
    import os
    import subprocess
    import sys

    img, _ = phantom_image(size=32)  # 128 mm: io accepts it as a head
    sitk.WriteImage(img, str(tmp_path / "head.nii.gz"))
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkOSMesaRenderWindow")
    proc = subprocess.run([sys.executable, "-m", "cpmae", "render", str(tmp_path / "head.nii.gz"),
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-500:]
    assert "cpmae: error: cannot render faces" in proc.stderr
    assert "Traceback" not in proc.stderr
