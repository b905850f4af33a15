"""Face QA on a real MRML scene: the layout, the changed-region volume, approve / reject records."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from mrml_heads import head_image


def test_layout_shows_before_and_after_in_3d_sagittal_and_axial():
    import slicer

    from CPMAEDeidentifyLib import faceqa

    root = ET.fromstring(faceqa.layoutXml())
    views = [(v.get("class"), v.get("singletontag")) for v in root.iter("view")]
    assert views[:2] == [("vtkMRMLViewNode", "1"), ("vtkMRMLViewNode", "2")]
    slices = [tag for cls, tag in views if cls == "vtkMRMLSliceNode"]
    assert slices == [faceqa.BEFORE_SLICES[0], faceqa.AFTER_SLICES[0], faceqa.BEFORE_SLICES[1], faceqa.AFTER_SLICES[1]]
    orientations = {v.get("singletontag"): v.find("property[@name='orientation']").text for v in root.iter("view")
                    if v.get("class") == "vtkMRMLSliceNode"}
    assert [orientations[s] for s in faceqa.BEFORE_SLICES] == ["Sagittal", "Axial"]
    assert [orientations[s] for s in faceqa.AFTER_SLICES] == ["Sagittal", "Axial"]
    layout = slicer.vtkMRMLLayoutNode()
    faceqa.registerLayout(layout)
    faceqa.registerLayout(layout)  # twice: refreshed, not duplicated
    assert layout.IsLayoutDescription(faceqa.LAYOUT_ID)
    assert layout.GetLayoutDescription(faceqa.LAYOUT_ID) == faceqa.layoutXml()


def test_changed_region_is_the_absolute_difference_outside_the_brain(context):
    import slicer

    from CPMAEDeidentifyLib import volumes
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    with_nose, mask = head_image(face=True)
    without_nose, _ = head_image(face=False)
    before = volumes.addVolumeNodeFromImage(context.scene, with_nose, "before")
    after = volumes.addVolumeNodeFromImage(context.scene, without_nose, "after")
    array = slicer.util.arrayFromVolume(after)
    brain = slicer.util.arrayFromVolume(volumes.addVolumeNodeFromImage(
        context.scene, mask, "mask", "vtkMRMLLabelMapVolumeNode")) > 0
    array[brain] += 7  # a change inside the brain must not show
    slicer.util.arrayFromVolumeModified(after)
    maskNode = context.scene.GetFirstNodeByName("mask")
    change = CPMAEDeidentifyLogic(context).changedRegion(before, after, maskNode)
    values = slicer.util.arrayFromVolume(change)
    expected = np.abs(slicer.util.arrayFromVolume(after).astype(np.float32)
                      - slicer.util.arrayFromVolume(before).astype(np.float32))
    expected[brain] = 0
    assert np.array_equal(values, expected)
    assert values.max() == 600  # the removed nose
    assert np.allclose(volumes.ijkToRasMatrix(change), volumes.ijkToRasMatrix(before))
    assert change.GetName() == "after change"


def test_decisions_are_stored_on_the_node_and_in_the_provenance_json(context, tmp_path):
    from cpmae.provenance import write_provenance
    from CPMAEDeidentifyLib import faceqa, volumes

    image, _ = head_image()
    node = volumes.addVolumeNodeFromImage(context.scene, image, "out")
    assert faceqa.nodeDecision(node) is None
    with pytest.raises(ValueError, match="needs a reason"):
        faceqa.recordDecision(node, approved=False, reason="  ")
    assert faceqa.nodeDecision(node) is None  # nothing half-recorded
    output = tmp_path / "sub-01_T1w.nii.gz"
    output.write_bytes(b"not really an image, but hashed like one")
    record = write_provenance(output, {"seed": 3, "resolution": 128}, seed=3)
    provenance = output.with_name(output.name + ".provenance.json")
    faceqa.recordDecision(node, approved=False, reason="ears remain", provenanceFile=provenance)
    assert faceqa.nodeDecision(node)["decision"] == "rejected"
    assert faceqa.nodeDecision(node)["reason"] == "ears remain"
    data = json.loads(provenance.read_text(encoding="utf-8"))
    assert data["review"]["decision"] == "rejected" and data["review"]["reason"] == "ears remain"
    assert {k: v for k, v in data.items() if k != "review"} == json.loads(json.dumps(record))
    approved = faceqa.recordDecision(node, approved=True)
    assert approved["decision"] == "approved" and faceqa.nodeDecision(node)["reason"] == ""


def test_face_region_matches_the_spec_cameras():
    from cpmae import render
    from CPMAEDeidentifyLib import faceqa

    a, _ = head_image(face=True, oblique=False)
    b, _ = head_image(face=False, oblique=False)
    skin = render._Skin(a)
    before = render.render_views(a, render.STANDARD_VIEWS, (120, 120), skin.iso, skin.centre())
    after = render.render_views(b, render.STANDARD_VIEWS, (120, 120), skin.iso, skin.centre())
    for view in ("profile_left", "profile_right", "below"):
        inside = faceqa.faceRegionDifference(before[view], after[view], view)
        changed = np.abs(before[view].astype(int) - after[view].astype(int)).max(axis=2) > 20
        rows, cols = faceqa.faceRegion(view, changed.shape)
        assert changed[rows, cols].sum() == changed.sum() > 0, f"{view}: the nose is outside its face region"
        assert inside > 2.0
