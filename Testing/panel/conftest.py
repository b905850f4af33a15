"""The panel's tests: the .ui with a real Qt binding, the parameter node's declarations, handler costs.

Desktop Slicer is not available here; what these tests stand in for is named in each file, and
everything else (the parameter node wrapper at run time, 3D views) is left to the module's
Slicer self-test.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "CPMAEDeidentify"
for path in (MODULE_DIR, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
