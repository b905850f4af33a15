"""Brain mask <-> segmentation node, always on the input volume's geometry.

The mask the engine keeps bit-identical is a voxel mask on the input grid, so conversions go
through a labelmap with the input's exact IJK-to-RAS and the segmentation's reference
geometry is the input volume: what the user previews is what the engine preserves.
"""
from __future__ import annotations

import numpy as np

from cpmae.errors import InputError
from CPMAEDeidentifyLib import volumes

BRAIN_SEGMENT_NAME = "brain"
BRAIN_COLOR = (0.95, 0.75, 0.2)


def brainVolumeCm3(maskImage) -> float:
    """Brain volume of a binary mask in cm³ (voxel count × voxel volume)."""
    import SimpleITK as sitk

    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(maskImage)))
    return voxels * float(np.prod(maskImage.GetSpacing())) / 1000.0


def _removeNode(scene, node) -> None:
    if node is None:
        return
    displayNode = node.GetDisplayNode() if hasattr(node, "GetDisplayNode") else None
    scene.RemoveNode(node)
    if displayNode is not None and displayNode.GetScene() is not None:
        scene.RemoveNode(displayNode)


def addSegmentationFromMask(context, maskImage, referenceVolumeNode, name: str):
    """New segmentation node with one 'brain' segment, referencing the input volume geometry."""
    import SimpleITK as sitk

    mask = sitk.GetArrayViewFromImage(maskImage)
    if mask.shape != tuple(referenceVolumeNode.GetImageData().GetDimensions())[::-1]:
        raise InputError(f"the brain mask grid {mask.shape[::-1]} differs from the input volume's", path=name)
    binary = sitk.GetImageFromArray((np.asarray(mask) > 0).astype(np.uint8))
    scene = context.scene
    labelmap = volumes.addVolumeNodeFromImage(scene, binary, "__cpmae_mask__", "vtkMRMLLabelMapVolumeNode",
                                              ijkToRas=volumes.ijkToRasMatrix(referenceVolumeNode))
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    try:
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        segmentationNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
        if not context.segmentationsLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode):
            raise InputError("Slicer could not turn the brain mask into a segmentation", path=name)
        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetNumberOfSegments() == 0:
            raise InputError("the brain mask is empty", path=name)
        segment = segmentation.GetNthSegment(0)
        segment.SetName(BRAIN_SEGMENT_NAME)
        segment.SetColor(*BRAIN_COLOR)
    except Exception:
        _removeNode(scene, segmentationNode)
        raise
    finally:
        _removeNode(scene, labelmap)
    return segmentationNode


def orientedMask(maskImage, referenceDims, referenceIjkToRas, name: str):
    """The mask as a binary vtkOrientedImageData on the reference grid: made on a job's worker
    (nothing in the scene refers to it), so the GUI thread only attaches it as a segment."""
    import SimpleITK as sitk
    import slicer
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    mask = sitk.GetArrayViewFromImage(maskImage)
    if mask.shape != tuple(referenceDims)[::-1]:
        raise InputError(f"the brain mask grid {mask.shape[::-1]} differs from the input volume's", path=name)
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if not binary.any():
        raise InputError("the brain mask is empty", path=name)
    oriented = slicer.vtkOrientedImageData()
    oriented.SetDimensions(*referenceDims)
    oriented.GetPointData().SetScalars(numpy_to_vtk(binary.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(referenceIjkToRas[r, c]))
    oriented.SetImageToWorldMatrix(matrix)
    return oriented


def addSegmentationFromOrientedMask(context, oriented, referenceVolumeNode, name: str):
    """New segmentation node with one 'brain' segment from an ``orientedMask`` (about 1 ms)."""
    segmentationNode = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    try:
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        segmentationNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
        if not segmentationNode.AddSegmentFromBinaryLabelmapRepresentation(oriented, BRAIN_SEGMENT_NAME,
                                                                          list(BRAIN_COLOR)):
            raise InputError("Slicer could not turn the brain mask into a segmentation", path=name)
    except Exception:
        _removeNode(context.scene, segmentationNode)
        raise
    return segmentationNode


def maskImageFromNode(context, maskNode, referenceVolumeNode):
    """Binary uint8 SimpleITK mask on the reference volume's grid from a segmentation or labelmap node.

    A segmentation is exported (all its segments, union) onto the reference geometry; a labelmap
    must already share the reference grid, because resampling a mask silently would change which
    voxels the engine keeps bit-identical.
    """
    import SimpleITK as sitk

    name = maskNode.GetName()
    scene = context.scene
    if maskNode.IsA("vtkMRMLSegmentationNode"):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__cpmae_export__")
        try:
            if not _exportOnReference(context, maskNode, labelmap, referenceVolumeNode):
                raise InputError("Slicer could not export this segmentation to the input grid", path=name)
            image = volumes.imageFromVolumeNode(labelmap)
        finally:
            _removeNode(scene, labelmap)
    elif maskNode.IsA("vtkMRMLLabelMapVolumeNode") or maskNode.IsA("vtkMRMLScalarVolumeNode"):
        if not volumes.sameGeometry(volumes.ijkToRasMatrix(maskNode), volumes.ijkToRasMatrix(referenceVolumeNode)) \
                or maskNode.GetImageData().GetDimensions() != referenceVolumeNode.GetImageData().GetDimensions():
            raise InputError("the labelmap is not on the input volume's voxel grid; "
                             "convert it to a segmentation first", path=name)
        image = volumes.imageFromVolumeNode(maskNode)
    else:
        raise InputError(f"a {maskNode.GetClassName()} cannot be used as a brain mask", path=name)
    binary = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(image) > 0).astype(np.uint8))
    volumes.applyGeometryToImage(binary, volumes.ijkToRasMatrix(referenceVolumeNode))
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise InputError("the brain mask is empty", path=name)
    return binary


def _exportOnReference(context, segmentationNode, labelmapNode, referenceVolumeNode) -> bool:
    import vtk

    segmentIds = vtk.vtkStringArray()
    segmentationNode.GetSegmentation().GetSegmentIDs(segmentIds)
    return bool(context.segmentationsLogic.ExportSegmentsToLabelmapNode(
        segmentationNode, segmentIds, labelmapNode, referenceVolumeNode))
