"""CPMAE engine: learned face remodeling for 3D head MRI (CP-MAE), Qt-free.

The engine is usable without Slicer: ``cpmae`` on the command line, or
``cpmae.pipeline.deidentify`` from Python. The Slicer module calls it out of process.
"""

__version__ = "0.1.0"
