"""Make the extension's icons and README/Extensions-Manager screenshots with the module's own Logic.

Only pydeface's averaged head is ever pictured (it is nobody's face). The head is loaded through
Slicer's Volumes logic into a slicer-core scene, remodelled by ``CPMAEDeidentifyLogic.process``
(out of process, the shipped weights) and rendered offscreen by ``renderFaces``, exactly what the
Face QA section exports. Usage (from the repository root, in the project venv)::

    python Resources/make_pictures.py [--resolution 128|256] [--icons-only]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "CPMAEDeidentify"))
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, choices=(128, 256), default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--icons-only", action="store_true")
    parser.add_argument("--weights", default=None, help="weights bundle (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for CPMAE.png and Screenshots/")
    args = parser.parse_args()

    from cpmae.samples import ensure_sample
    from CPMAEDeidentifyLib import rendering
    from CPMAEDeidentifyLib.context import SlicerContext
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    context = SlicerContext.standalone()
    head = context.loadVolume(ensure_sample("pydeface-mean"), "pydeface-mean")
    logic = CPMAEDeidentifyLogic(context)
    with tempfile.TemporaryDirectory() as tmp:
        # icon: the averaged head in profile, 128x128
        written = rendering.renderFaceViews(context, {"icon": head}, tmp, views=("profile",), size=(128, 128))
        args.out.mkdir(parents=True, exist_ok=True)
        icons = [args.out / "CPMAE.png"]
        if args.out == HERE:
            icons.append(REPO / "CPMAEDeidentify" / "Resources" / "Icons" / "CPMAEDeidentify.png")
        for target in icons:
            shutil.copyfile(written["icon_profile"], target)
            print(f"wrote {target}")
        if args.icons_only:
            return 0
        job = logic.process(head, resolution=args.resolution, seed=args.seed, weights=args.weights)
        pictures = logic.renderFaces(head, job.outputNode, tmp, size=(384, 384))
        (args.out / "Screenshots").mkdir(parents=True, exist_ok=True)
        for view in ("frontal", "profile"):
            target = args.out / "Screenshots" / f"face_qa_{view}.png"
            shutil.copyfile(pictures[f"pair_{view}"], target)
            print(f"wrote {target} (left: input, right: remodelled at {args.resolution}³, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
