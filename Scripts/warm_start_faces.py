"""Before / after / profile renders of pydeface's averaged head with a bundle's sampler settings
(default: the architecture-2 warm start, seeds 0-3): docs/face-128-warm-start.png.

    python Scripts/warm_start_faces.py [--weights Scripts/warm-start/face-128] [--out PNG] [--seeds 0,1,2,3]

Only the averaged head (not a real person) is pictured. ~40 s per seed on 2 CPU cores.
"""
import argparse

import numpy as np

from cpmae.brainmask import compute_brain_mask
from cpmae.io import read_image
from cpmae.pipeline import deidentify
from cpmae.render import render_face, save_png
from cpmae.samples import ensure_sample
from cpmae.selfcheck import frontal_renders
from cpmae.weights import load_bundle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="Scripts/warm-start/face-128")
    p.add_argument("--out", default="docs/face-128-warm-start.png")
    p.add_argument("--seeds", default="0,1,2,3")
    a = p.parse_args()
    bundle = load_bundle(a.weights, 128, "cpu")
    img = read_image(ensure_sample("pydeface-mean"))
    mask = compute_brain_mask(img)
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        res = deidentify(img, mask, bundle=bundle, seed=seed, device="cpu")
        before, after, _ = frontal_renders(img, res.image, mask, frame=res.brain_frame)
        side = render_face(res.image, "profile_right")[: after.shape[0], : after.shape[1]]
        rows.append(np.concatenate([before, after, side], 1))
        print(seed, res.info.get("face_surface"), res.info.get("face_pose"), round(res.timings["total"], 1), flush=True)
    save_png(np.concatenate(rows, 0), a.out)
    try:  # 128 colours: the same picture at half the bytes
        from PIL import Image

        Image.open(a.out).convert("RGB").quantize(128, method=Image.Quantize.MEDIANCUT).save(a.out, optimize=True)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
