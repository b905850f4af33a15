"""Make the extension's icons and README/Extensions-Manager screenshots with the module's own Logic.

Only pydeface's averaged head is ever pictured (it is nobody's face). The head is loaded through
Slicer's Volumes logic into a slicer-core scene, remodelled by ``CPMAEDeidentifyLogic.process``
(out of process, the shipped weights) and rendered by ``renderFaces`` (``cpmae render``, out of
process, the six cameras of ``cpmae.render``), exactly what the Face QA section exports. Usage (from the repository root, in the project venv)::

    python Resources/make_pictures.py [--resolution 128|256] [--icons-only]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "CPMAEDeidentify"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from cpmae.geometry import DEFAULT_RESOLUTION, GRIDS

    parser.add_argument("--resolution", type=int, choices=sorted(GRIDS), default=DEFAULT_RESOLUTION)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--icons-only", action="store_true")
    parser.add_argument("--weights", default=None, help="weights bundle (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for CPMAE.png and Screenshots/")
    args = parser.parse_args()

    from cpmae.samples import ensure_sample
    from CPMAEDeidentifyLib.context import SlicerContext
    from CPMAEDeidentifyLib.logic import CPMAEDeidentifyLogic

    context = SlicerContext.standalone()
    head = context.loadVolume(ensure_sample("pydeface-mean"), "pydeface-mean")
    logic = CPMAEDeidentifyLogic(context)
    with tempfile.TemporaryDirectory() as tmp:
        # icon: the averaged head in right profile, 128x128
        icon = logic.renderFaces(head, head, Path(tmp) / "icon", views=("profile_right",), size=128).result
        args.out.mkdir(parents=True, exist_ok=True)
        icons = [args.out / "CPMAE.png"]
        if args.out == HERE:
            icons.append(REPO / "CPMAEDeidentify" / "Resources" / "Icons" / "CPMAEDeidentify.png")
        for target in icons:
            shutil.copyfile(icon["before_profile_right"], target)
            print(f"wrote {target}")
        if args.icons_only:
            return 0
        job = logic.process(head, resolution=args.resolution, seed=args.seed, weights=args.weights)
        views = ("frontal", "profile_right")
        pictures = logic.renderFaces(head, job.outputNode, Path(tmp) / "qa", views=views, size=384).result
        (args.out / "Screenshots").mkdir(parents=True, exist_ok=True)
        for view, name in zip(views, ("frontal", "profile")):
            target = args.out / "Screenshots" / f"face_qa_{name}.png"
            _pair(pictures[f"before_{view}"], pictures[f"after_{view}"], target)
            print(f"wrote {target} (left: input, right: remodelled at {args.resolution}³, seed {args.seed})")
    return 0


def _pair(before, after, target) -> None:
    """Input and result side by side with a white gap (the Extensions Manager screenshot)."""
    import numpy as np
    from PIL import Image

    a, b = np.asarray(Image.open(before).convert("RGB")), np.asarray(Image.open(after).convert("RGB"))
    gap = np.full((a.shape[0], 8, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([a, gap, b], axis=1)).save(target)


if __name__ == "__main__":
    sys.exit(main())
