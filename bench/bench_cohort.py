"""How fast the cohort generator is and how different its faces are (numbers in docs/cohort.md).

    python bench/bench_cohort.py [--pairs-n 10] [--timing-n 4]

Times ``generate_subject`` at 128³ and 256³ (wall and process CPU time, after the per-source
set-up, with the load average, because this machine is shared), then the mean symmetric face
surface distance over all pairs of the first ``--pairs-n`` subjects at 128³: same-source and
different-source pairs, the same with the skin found in the augmented image instead of carried
through the warp, and with the face/skull warp alone (global part off).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import banner  # noqa: E402


def _stats(values):
    v = np.asarray(values, float)
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} mm (min {v.min():.2f}, max {v.max():.2f}, {len(v)} pairs)"


def timing(n: int) -> None:
    from cpmae import cohort

    for size in (128, 256):
        cohort.generate_subject(0, size)  # sources + per-source frame (cached after this)
        cohort.generate_subject(1, size)
        walls, cpus = [], []
        for i in range(2, 2 + n):
            t, c = time.perf_counter(), time.process_time()
            cohort.generate_subject(i, size)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        print(f"generate_subject {size}³: wall {np.median(walls):.2f} s median ({min(walls):.2f}-{max(walls):.2f}), "
              f"process CPU {np.median(cpus):.2f} s median, {n} subjects, load average {os.getloadavg()[0]:.1f}")


def local_only(index: int, size: int):
    from cpmae import cohort
    from cpmae import cohort_augment as aug

    warp, params, _, frame = cohort.draw_warp(index, size, seed=0, global_part=False)
    labels = aug.apply_warp(frame.volumes, warp)[1].numpy()
    return cohort.Subject(np.zeros(1, np.float32), (labels >= 0.75).astype(np.uint8), params["source"], params,
                          head=(labels >= 0.25).astype(np.uint8))


def distances(n: int) -> None:
    from cpmae import cohort

    subs = {i: cohort.generate_subject(i, 128) for i in range(n)}
    kinds = {"carried skin": lambda s: s,
             "skin from the image": lambda s: dataclasses.replace(s, head=None)}
    for label, view in kinds.items():
        same, diff = [], []
        for a, b in itertools.combinations(range(n), 2):
            d = cohort.face_surface_distance(view(subs[a]), view(subs[b]), 128)
            (same if cohort.source_of(a) == cohort.source_of(b) else diff).append(d)
        print(f"face surface distance 128³, {label}: all {_stats(same + diff)}")
        print(f"    same source {_stats(same)}; different sources {_stats(diff)}")
    loc = {i: local_only(i, 128) for i in range(n)}
    same = [cohort.face_surface_distance(loc[a], loc[b], 128) for a, b in itertools.combinations(range(n), 2)
            if cohort.source_of(a) == cohort.source_of(b)]
    print(f"face/skull warp alone (global part off), same source: {_stats(same)}")
    print("min Jacobian determinant over the subjects: "
          f"{min(s.params['min_jacobian'] for s in subs.values()):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs-n", type=int, default=10)
    ap.add_argument("--timing-n", type=int, default=4)
    args = ap.parse_args()
    print(banner())
    timing(args.timing_n)
    distances(args.pairs_n)


if __name__ == "__main__":
    main()
