"""Qt-free logic of the CPMAEDeidentify Slicer module.

Everything here runs against a plain MRML scene: inside Slicer (``SlicerContext.fromSlicer()``)
and under pytest with PyPI's ``slicer-core`` (``SlicerContext.standalone()``). No ``qt``,
``slicer.app`` or ``parameterNodeWrapper`` imports: those exist only in the desktop application.
The engine itself (``cpmae``) always runs out of process, see ``jobs``.
"""
from CPMAEDeidentifyLib.context import SlicerContext
from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic, DeidentifyJob, MaskResult

__all__ = ["SlicerContext", "CPMAEDeidentifyLogic", "DeidentifyJob", "MaskResult"]
