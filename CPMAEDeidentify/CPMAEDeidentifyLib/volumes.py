"""Volume node <-> SimpleITK image, with the IJK-to-RAS geometry kept exactly.

Slicer stores geometry in RAS, ITK/NIfTI readers in LPS: the first two axes of the origin
and of every direction column change sign. Voxel arrays need no reordering: Slicer's
``arrayFromVolume`` and ``sitk.GetArrayFromImage`` are both indexed ``[k, j, i]``.
"""
from __future__ import annotations

import numpy as np

from cpmae.errors import InputError

# diag(-1, -1, 1): RAS <-> LPS (its own inverse)
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def ijkToRasMatrix(node) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a volume node as numpy (ignores parent transforms on purpose)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def setIjkToRasMatrix(node, matrix: np.ndarray) -> None:
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(matrix[r, c]))
    node.SetIJKToRASMatrix(m)


def geometryFromImage(image) -> np.ndarray:
    """IJK-to-RAS 4x4 of a SimpleITK image (LPS origin/direction/spacing)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_TO_LPS @ direction @ np.diag(spacing)
    matrix[:3, 3] = RAS_TO_LPS @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def applyGeometryToImage(image, ijkToRas: np.ndarray) -> None:
    """Set spacing/origin/direction of a SimpleITK image from an IJK-to-RAS 4x4."""
    linear = RAS_TO_LPS @ ijkToRas[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in direction.ravel()])
    image.SetOrigin([float(o) for o in RAS_TO_LPS @ ijkToRas[:3, 3]])


def snapshot(node):
    """(voxels [k, j, i], IJK-to-RAS, image data) of a scalar volume node: what a job needs.

    Taken on the caller's thread (MRML is not thread-safe) and without copying the voxels (a
    256³ copy alone can cost the GUI thread 100-200 ms on a busy machine): the array is a view
    of the node's vtkImageData, which the snapshot holds a reference to, so the buffer stays
    valid even if the node gets new image data meanwhile. Turning it into an image and writing
    it happen on the job's worker thread (``imageFromSnapshot``), within a second of the click.
    """
    import slicer

    name = node.GetName() if node is not None else None
    if node is None or node.GetImageData() is None:
        raise InputError("the volume has no image data", path=name)
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InputError("the volume has several components per voxel (colour or vector image); "
                         "a scalar MRI volume is needed", path=name)
    array = slicer.util.arrayFromVolume(node)
    if array.ndim != 3 or min(array.shape) < 2:
        raise InputError(f"the volume is not a 3D image (shape {array.shape})", path=name)
    return array, ijkToRasMatrix(node), node.GetImageData()


def imageFromSnapshot(snap):
    """SimpleITK image (LPS geometry) of a ``snapshot``; thread-safe."""
    import SimpleITK as sitk

    array, matrix = snap[0], snap[1]
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    applyGeometryToImage(image, matrix)
    return image


def imageFromVolumeNode(node):
    """SimpleITK copy of a scalar volume node's voxels and geometry (LPS)."""
    return imageFromSnapshot(snapshot(node))


def writeImage(image, path) -> None:
    """Write an image for the engine (NIfTI through SimpleITK, geometry in LPS); thread-safe.

    Job files are private and short-lived: ``.nii`` (no gzip) keeps writing and reading them
    fast, ``.nii.gz`` is compressed."""
    import SimpleITK as sitk

    sitk.WriteImage(image, str(path), str(path).endswith(".gz"))


def writeVolumeNode(node, path) -> None:
    """Write a volume node for the engine (reads the node: caller's thread only)."""
    writeImage(imageFromVolumeNode(node), path)


def addVolumeNodeFromImage(scene, image, name: str, className: str = "vtkMRMLScalarVolumeNode",
                           ijkToRas: np.ndarray | None = None):
    """New volume node holding ``image``'s voxels; geometry from ``ijkToRas`` when given (exact copy)."""
    import SimpleITK as sitk
    import slicer

    array = sitk.GetArrayFromImage(image)
    node = scene.AddNewNodeByClass(className, name)
    slicer.util.updateVolumeFromArray(node, array)
    setIjkToRasMatrix(node, geometryFromImage(image) if ijkToRas is None else ijkToRas)
    node.CreateDefaultDisplayNodes()
    return node


def sameGeometry(matrixA: np.ndarray, matrixB: np.ndarray, tolerance: float = 1e-4) -> bool:
    """True when two IJK-to-RAS matrices agree (NIfTI stores them in float32, hence a tolerance)."""
    return bool(np.allclose(matrixA, matrixB, atol=tolerance, rtol=0))


def imageDataFromImage(image):
    """A vtkImageData holding a copy of ``image``'s voxels (no geometry: Slicer keeps it in the
    node). Made on a job's worker thread: nothing in the scene refers to it yet."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*image.GetSize())
    scalars = numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    imageData.GetPointData().SetScalars(scalars)
    return imageData


def addVolumeNodeFromImageData(scene, imageData, name: str, ijkToRas: np.ndarray, windowLevel=None):
    """New scalar volume node around ready voxels: cheap on the GUI thread. With ``windowLevel``
    the display starts with it instead of computing an automatic one (a histogram of every voxel)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.SetDefaultColorMap()
    if windowLevel is not None:
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(*windowLevel)
    node.SetAndObserveDisplayNodeID(display.GetID())
    setIjkToRasMatrix(node, ijkToRas)
    node.SetAndObserveImageData(imageData)
    return node
