"""Face pictures from the panel: the engine's renderer out of process, the spec's cameras in 3D views."""
from __future__ import annotations

import numpy as np
import pytest

from mrml_heads import head_image


def read_png(path) -> np.ndarray:
    from CPMAEDeidentifyLib.faceqa import readPng

    return readPng(path)


def face_difference(a: np.ndarray, b: np.ndarray, view: str) -> float:
    from CPMAEDeidentifyLib.faceqa import faceRegionDifference

    return faceRegionDifference(a, b, view)


def test_export_writes_the_six_standard_views_that_differ_where_the_face_changed(context, tmp_path):
    from cpmae.render import STANDARD_VIEWS
    from CPMAEDeidentifyLib import volumes
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    with_nose, _ = head_image(face=True, oblique=False)
    without_nose, _ = head_image(face=False, oblique=False)
    before = volumes.addVolumeNodeFromImage(context.scene, with_nose, "before")
    after = volumes.addVolumeNodeFromImage(context.scene, without_nose, "after")
    work = tmp_path / "jobs"
    work.mkdir()
    job = CPMAEDeidentifyLogic(context, tempRoot=str(work)).renderFaces(before, after, tmp_path / "qa", size=160)
    pngs = job.result
    assert set(pngs) == {f"{w}_{v}" for w in ("before", "after") for v in STANDARD_VIEWS} | {"before_after"}
    assert sorted(p.name for p in (tmp_path / "qa").iterdir()) == sorted(p.name for p in pngs.values())
    assert list(work.iterdir()) == []  # the job's temp folder is gone
    for view in STANDARD_VIEWS:  # a small nose on a 48-voxel head: a small change, but in every view
        a, b = read_png(pngs[f"before_{view}"]), read_png(pngs[f"after_{view}"])
        assert a.shape == (160, 160, 3)
        assert (a.max(axis=2) > 30).mean() > 0.1, "the head should fill a good part of the picture"
        least = 2.0 if view.startswith("profile") or view == "below" else 1.0
        assert face_difference(a, b, view) > least, f"{view}: the nose was removed, the face region must change"
    # the back of the head is the same in both right-profile pictures (same camera, same skull)
    a, b = read_png(pngs["before_profile_right"]), read_png(pngs["after_profile_right"])
    assert np.abs(a[:, :60].astype(float) - b[:, :60].astype(float)).mean() < 1.0
    # no volume rendering was switched on in the scene by the export
    assert context.volumeRenderingLogic.GetFirstVolumeRenderingDisplayNode(before) is None


def test_the_panel_pictures_use_the_engines_cameras(context, tmp_path):
    """Same views, same pixels as `cpmae.render` on the same image: one specification."""
    from cpmae import render
    from CPMAEDeidentifyLib import volumes
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    image, _ = head_image(face=True, oblique=True)
    node = volumes.addVolumeNodeFromImage(context.scene, image, "head")
    job = CPMAEDeidentifyLogic(context, tempRoot=str(tmp_path)).renderFaces(
        node, node, tmp_path / "qa", views=("below", "three_quarter_left"), size=96)
    direct = render.render_views(volumes.imageFromVolumeNode(node), ("below", "three_quarter_left"), (96, 96))
    for view in ("below", "three_quarter_left"):
        assert np.abs(read_png(job.result[f"before_{view}"]).astype(int) - direct[view].astype(int)).max() <= 1


def test_3d_view_cameras_are_the_spec_cameras_in_ras():
    from cpmae import render
    from CPMAEDeidentifyLib import rendering

    for view in render.STANDARD_VIEWS:
        direction, up = rendering.cameraRas(view)
        lps_direction, lps_up = render.CAMERAS[view]
        assert np.allclose(direction, [-lps_direction[0], -lps_direction[1], lps_direction[2]])
        assert np.allclose(up, [-lps_up[0], -lps_up[1], lps_up[2]])
    # the subject's left is +x in LPS and -x ... no: +R is the subject's right in RAS
    assert np.allclose(rendering.cameraRas("profile_left")[0], [-1, 0, 0])  # camera at the subject's left
    assert np.allclose(rendering.cameraRas("profile_right")[0], [1, 0, 0])
    assert np.allclose(rendering.cameraRas("frontal")[0], [0, 1, 0])  # anterior is +A in RAS


def test_aimed_camera_looks_at_the_head_from_the_chosen_side(context):
    import slicer

    from CPMAEDeidentifyLib import rendering, volumes

    image, _ = head_image()
    node = volumes.addVolumeNodeFromImage(context.scene, image, "head")
    camera = slicer.vtkMRMLCameraNode()
    rendering.aimCamera(camera, node, "profile_left")
    centre = rendering.rasBounds(node).reshape(3, 2).mean(axis=1)
    offset = np.array(camera.GetPosition()) - np.array(camera.GetFocalPoint())
    assert np.allclose(camera.GetFocalPoint(), centre)
    assert offset[0] < 0 and abs(offset[1]) < 1e-6 and abs(offset[2]) < 1e-6  # from the left (-R)
    assert camera.GetParallelProjection()


def test_skin_transfer_function_uses_the_spec_threshold_and_colour(context):
    from cpmae import render
    from CPMAEDeidentifyLib import rendering, volumes

    image, _ = head_image()
    node = volumes.addVolumeNodeFromImage(context.scene, image, "head")
    threshold = rendering.skinThreshold(__import__("slicer").util.arrayFromVolume(node))
    assert threshold == pytest.approx(render.skin_threshold(image))
    display = rendering.showSkinRendering(context, node, threshold, ["vtkMRMLViewNodeX"])
    assert display is context.volumeRenderingLogic.GetFirstVolumeRenderingDisplayNode(node)
    assert [display.GetNthViewNodeID(i) for i in range(display.GetNumberOfViewNodeIDs())] == ["vtkMRMLViewNodeX"]
    prop = display.GetVolumePropertyNode().GetVolumeProperty()
    assert prop.GetScalarOpacity().GetValue(0.0) == 0.0  # air is transparent
    assert prop.GetScalarOpacity().GetValue(2 * threshold) == pytest.approx(1.0)  # skin is opaque
    assert prop.GetRGBTransferFunction().GetColor(threshold) == pytest.approx(render.SKIN_RGB)
    rendering.setSkinThreshold(context, [node], threshold / 2)  # the Face QA slider
    assert prop.GetScalarOpacity().GetValue(threshold) == pytest.approx(1.0)
