"""The MRML scene and the Slicer module logics the CPMAE logic works with.

In the desktop application they already exist (``slicer.mrmlScene``, ``slicer.modules.*``);
without it (pytest, batch scripts on a server) ``standalone()`` builds the same objects from
``slicer-core`` so that the logic is exercised against a real scene rather than a mock.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SlicerContext:
    """A scene plus the logics that load volumes, convert segmentations and render volumes."""

    scene: Any
    appLogic: Any
    volumesLogic: Any
    segmentationsLogic: Any
    volumeRenderingLogic: Any

    @classmethod
    def fromSlicer(cls) -> "SlicerContext":
        """The running Slicer application's scene and module logics."""
        import slicer

        return cls(
            scene=slicer.mrmlScene,
            appLogic=slicer.app.applicationLogic(),
            volumesLogic=slicer.modules.volumes.logic(),
            segmentationsLogic=slicer.modules.segmentations.logic(),
            volumeRenderingLogic=slicer.modules.volumerendering.logic(),
        )

    @classmethod
    def standalone(cls) -> "SlicerContext":
        """A fresh scene with the module logics registered the way Slicer's core application does."""
        import slicer

        scene = slicer.vtkMRMLScene()
        appLogic = slicer.vtkSlicerApplicationLogic()
        appLogic.SetMRMLScene(scene)
        colorLogic = appLogic.GetColorLogic()
        colorLogic.SetMRMLScene(scene)
        colorLogic.AddDefaultColorNodes()
        appLogic.SetModuleLogic("Colors", colorLogic)

        def register(logic, name):
            logic.SetMRMLScene(scene)
            logic.SetMRMLApplicationLogic(appLogic)
            appLogic.SetModuleLogic(name, logic)
            return logic

        volumesLogic = register(slicer.vtkSlicerVolumesLogic(), "Volumes")
        segmentationsLogic = register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
        volumeRenderingLogic = register(slicer.vtkSlicerVolumeRenderingLogic(), "VolumeRendering")
        return cls(scene, appLogic, volumesLogic, segmentationsLogic, volumeRenderingLogic)

    def loadVolume(self, path, name: str = ""):
        """Load an image file through the Volumes logic, exactly as File > Add Data does."""
        from pathlib import Path

        from cpmae.errors import InputError

        path = Path(path)
        if not path.is_file():
            raise InputError("file not found", path=path)
        node = self.volumesLogic.AddArchetypeVolume(str(path), name or path.name.split(".")[0], 0)
        if node is None:
            raise InputError("Slicer could not read this file as a volume", path=path)
        return node
