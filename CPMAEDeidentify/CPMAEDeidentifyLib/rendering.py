"""Face QA in Slicer's 3D views, with the engine's render specification (``cpmae.render``).

A person judges de-identification by looking at the face, so the panel shows a skin-like
volume rendering from the same six cameras, skin threshold and colour as ``cpmae render``, the
audit and the review page: the panel's pictures can be compared with theirs. Cameras are
converted from the specification's LPS to Slicer's RAS here, once.

Nothing in this module opens a render window: Slicer's own 3D views draw, and the PNG export
runs ``cpmae render`` out of process (``CPMAEDeidentifyLogic.renderFaces``), so no offscreen
(EGL/OSMesa) window is ever created inside Slicer and no volume rendering is switched on in a
view that did not ask for it.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from cpmae import render as spec
from CPMAEDeidentifyLib import volumes

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
OPACITY_RAMP = 0.2  # opacity goes from 0 to 1 between (1 -/+ ramp) x threshold: a surface, not a fog


def cameraRas(view: str) -> Tuple[np.ndarray, np.ndarray]:
    """(direction from the focal point to the camera, view-up) of a spec view, in RAS."""
    direction, up = spec.camera(view)
    return np.asarray(direction) * LPS_TO_RAS, np.asarray(up) * LPS_TO_RAS


def skinThreshold(array: np.ndarray) -> float:
    """The specification's automatic skin iso-value of a volume's voxels."""
    return float(spec.skin_threshold(np.asarray(array)))


def configureSkinProperty(volumeProperty, threshold: float) -> None:
    """Fill a vtkVolumeProperty with the skin-like surface transfer function (spec colour)."""
    opacity = volumeProperty.GetScalarOpacity()
    opacity.RemoveAllPoints()
    opacity.AddPoint(-1e9, 0.0)
    opacity.AddPoint(threshold * (1 - OPACITY_RAMP), 0.0)
    opacity.AddPoint(threshold * (1 + OPACITY_RAMP), 1.0)
    opacity.AddPoint(1e9, 1.0)
    color = volumeProperty.GetRGBTransferFunction()
    color.RemoveAllPoints()
    color.AddRGBPoint(-1e9, *spec.SKIN_RGB)
    color.AddRGBPoint(1e9, *spec.SKIN_RGB)
    gradient = volumeProperty.GetGradientOpacity()
    gradient.RemoveAllPoints()
    gradient.AddPoint(0, 1.0)
    gradient.AddPoint(1e9, 1.0)
    volumeProperty.ShadeOn()
    volumeProperty.SetInterpolationTypeToLinear()
    volumeProperty.SetAmbient(0.12)
    volumeProperty.SetDiffuse(0.85)
    volumeProperty.SetSpecular(0.08)
    volumeProperty.SetSpecularPower(12)


def showSkinRendering(context, volumeNode, threshold: Optional[float] = None, viewNodeIds: Sequence[str] = ()):
    """Create (or reuse) the node's volume rendering display with the skin transfer function.

    With ``viewNodeIds`` the rendering is shown in those views only (Face QA's two 3D views);
    an empty list means every 3D view, Slicer's default.
    """
    import slicer

    logic = context.volumeRenderingLogic
    displayNode = logic.GetFirstVolumeRenderingDisplayNode(volumeNode)
    if displayNode is None:
        displayNode = logic.CreateDefaultVolumeRenderingNodes(volumeNode)
    if threshold is None:
        threshold = skinThreshold(slicer.util.arrayFromVolume(volumeNode))
    configureSkinProperty(displayNode.GetVolumePropertyNode().GetVolumeProperty(), threshold)
    displayNode.RemoveAllViewNodeIDs()
    for viewNodeId in viewNodeIds:
        displayNode.AddViewNodeID(viewNodeId)
    displayNode.SetVisibility(True)
    return displayNode


def setSkinThreshold(context, volumeNodes, threshold: float) -> None:
    """Move the skin threshold of the nodes' existing skin renderings (the Face QA slider)."""
    for node in volumeNodes:
        displayNode = context.volumeRenderingLogic.GetFirstVolumeRenderingDisplayNode(node)
        if displayNode is not None:
            configureSkinProperty(displayNode.GetVolumePropertyNode().GetVolumeProperty(), threshold)


def rasBounds(volumeNode) -> np.ndarray:
    """(xmin, xmax, ymin, ymax, zmin, zmax) of the volume's voxel centres in RAS."""
    dims = volumeNode.GetImageData().GetDimensions()
    corners = np.array([[i, j, k, 1.0] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1) for k in (0, dims[2] - 1)])
    ras = (volumes.ijkToRasMatrix(volumeNode) @ corners.T).T[:, :3]
    return np.ravel(np.column_stack([ras.min(axis=0), ras.max(axis=0)]))


def aimCamera(cameraNode, volumeNode, view: str, distanceFactor: float = 4.0) -> None:
    """Point a vtkMRMLCameraNode at the volume's centre from a spec view (parallel projection).

    Both Face QA views get the same camera from the *input* volume, so before and after line up.
    """
    bounds = rasBounds(volumeNode)
    centre = bounds.reshape(3, 2).mean(axis=1)
    extent = bounds[1::2] - bounds[0::2]
    radius = 0.5 * float(np.linalg.norm(extent))
    direction, up = cameraRas(view)
    cameraNode.SetFocalPoint(*centre)
    cameraNode.SetPosition(*(centre + distanceFactor * radius * direction))
    cameraNode.SetViewUp(*up)
    cameraNode.SetParallelProjection(True)
    cameraNode.SetParallelScale(0.5 * float(extent.max()) * 1.05)
    cameraNode.ResetClippingRange()
