"""Offscreen before/after face renderings through Slicer's volume rendering logic."""
from __future__ import annotations

import numpy as np

from mrml_heads import head_image


def read_png(path) -> np.ndarray:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]


def face_difference(a: np.ndarray, b: np.ndarray, view: str) -> float:
    """Mean absolute RGB difference inside the face region of a view.

    Frontal: the central half of the picture (nose, eyes, mouth). Profile (from the patient's
    left, face pointing left): the left third of the picture between 20 % and 90 % of its height.
    """
    h, w = a.shape[:2]
    if view == "frontal":
        region = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    else:
        region = (slice(h // 5, 9 * h // 10), slice(0, w // 3))
    return float(np.abs(a[region].astype(float) - b[region].astype(float)).mean())


def test_before_after_pngs_are_written_and_differ_only_where_the_face_changed(context, tmp_path):
    from CPMAEDeidentifyLib import volumes
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    with_nose, _ = head_image(face=True, oblique=False)
    without_nose, _ = head_image(face=False, oblique=False)
    before = volumes.addVolumeNodeFromImage(context.scene, with_nose, "before")
    after = volumes.addVolumeNodeFromImage(context.scene, without_nose, "after")
    pngs = CPMAEDeidentifyLogic(context).renderFaces(before, after, tmp_path / "qa", size=(160, 160))
    assert set(pngs) == {f"{w}_{v}" for w in ("before", "after", "pair") for v in ("frontal", "profile")}
    assert sorted(p.name for p in (tmp_path / "qa").iterdir()) == sorted(p.name for p in pngs.values())  # no temp files
    for view in ("frontal", "profile"):
        a, b = read_png(pngs[f"before_{view}"]), read_png(pngs[f"after_{view}"])
        assert a.shape == (160, 160, 3)
        assert (a.max(axis=2) > 30).mean() > 0.15, "the head should fill a good part of the picture"
        assert face_difference(a, b, view) > 2.0, "the nose was removed: the face region must change"
        pair = read_png(pngs[f"pair_{view}"])
        assert pair.shape == (160, 2 * 160 + 8, 3)
    # the back of the head is the same in both profile pictures (same camera, same skull)
    a, b = read_png(pngs["before_profile"]), read_png(pngs["after_profile"])
    assert np.abs(a[:, 110:].astype(float) - b[:, 110:].astype(float)).mean() < 1.0


def test_skin_transfer_function_is_in_the_volume_rendering_display_node(context):
    from CPMAEDeidentifyLib import rendering, volumes

    image, _ = head_image()
    node = volumes.addVolumeNodeFromImage(context.scene, image, "head")
    display = rendering.showSkinRendering(context, node)
    assert display is context.volumeRenderingLogic.GetFirstVolumeRenderingDisplayNode(node)
    opacity = display.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    threshold = rendering.skinThreshold(np.full((8, 8, 8), 600.0))
    assert opacity.GetValue(0.0) == 0.0  # air is transparent
    assert opacity.GetValue(600.0) > 0.8  # skin is opaque
    assert 0 < threshold < 600
