"""``cpmae audit COHORT_DIR --out REPORT_DIR``: privacy and utility of every method, in one report."""
from __future__ import annotations

from cpmae.device import DEVICE_HELP
from cpmae.geometry import GRIDS, QUICK_RESOLUTION, describe_grids


def register(sub) -> None:
    from cpmae.audit.methods import DEFAULT_METHODS

    p = sub.add_parser(
        "audit", help="re-identification attack + brain-preservation audit of de-identification methods",
        description="Apply every method to every scan of a folder (BIDS-like sub-*/anat/*_T1w.nii.gz with "
        "optional derivatives/*/...desc-brain_mask, or a flat folder of scans), attack the results (pictures "
        "in a pose fixed to the brain) with a Siamese network trained on other subjects, a face recognizer and "
        "a silhouette matcher, measure brain preservation and downstream segmentation, and write report.html, "
        "results.json and results.csv. Exit code 4 when CPMAE's weights were trained on this cohort's seed.")
    p.add_argument("cohort", help="folder of scans to evaluate (at least 5)")
    p.add_argument("--out", required=True, help="report folder (created; its cache/ subfolder speeds up re-runs)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods (default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--weights", default=None, help="CPMAE weights bundle (default: the shipped demo weights)")
    p.add_argument("--resolution", type=int, choices=sorted(GRIDS), default=QUICK_RESOLUTION,
                   help="CPMAE model grid and the grid of generated training subjects: "
                        + describe_grids(QUICK_RESOLUTION))
    p.add_argument("--steps", type=int, default=None, help="CPMAE sampling steps (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0, help="seed of CPMAE, the attacker and the bootstrap")
    p.add_argument("--device", default="cpu", help="default cpu; " + DEVICE_HELP)
    p.add_argument("--render-size", type=int, default=160, help="face picture size in pixels (default 160)")
    p.add_argument("--train-subjects", type=int, default=24, help="attacker training subjects (default 24)")
    p.add_argument("--train-steps", type=int, default=300, help="attacker training steps (default 300)")
    p.add_argument("--train-dir", default=None,
                   help="train the attacker on these scans instead of generated subjects (must be other people)")
    p.add_argument("--folds", type=int, default=1000, help="bootstrap folds (default 1000)")
    p.add_argument("--no-deepbet", dest="deepbet", action="store_false",
                   help="skip downstream brain extraction; tissue classes then use the given brain masks")
    p.add_argument("--grid-subjects", default=None, help="comma-separated scan ids shown in the render grid")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="recompute everything")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from cpmae.audit.runner import AuditSettings, run_audit
    from cpmae.errors import InputError
    from cpmae.progress import Reporter

    for name in ("train_subjects", "train_steps", "folds", "render_size"):
        if getattr(args, name) < (2 if name == "train_subjects" else 1):
            raise InputError(f"--{name.replace('_', '-')} is too small ({getattr(args, name)})")
    settings = AuditSettings(
        methods=[m for m in args.methods.split(",") if m.strip()], weights=args.weights,
        resolution=args.resolution, steps=args.steps, seed=args.seed, device=args.device,
        render_size=args.render_size, train_subjects=args.train_subjects, train_steps=args.train_steps,
        train_dir=args.train_dir, folds=args.folds, deepbet=args.deepbet, cache=args.cache,
        grid_subjects=[s.strip() for s in args.grid_subjects.split(",")] if args.grid_subjects else None,
    )
    reporter = Reporter(args.progress)
    results = run_audit(args.cohort, args.out, settings, reporter)
    print(f"{'':<16}identification % (face region / whole head)              faces found %", file=sys.stderr)
    print(f"{'method':<16}{'Siamese':<15}{'face recognizer':<20}{'silhouette':<18}", file=sys.stderr)
    for name, p in results["privacy"].items():
        a = p["attacks"]
        pair = lambda k: f"{a[k + '_face']['mean']:3.0f} / {a[k + '_head']['mean']:3.0f}"  # noqa: E731
        print(f"{name:<16}{pair('siamese'):<15}{pair('facerec'):<20}{pair('silhouette'):<18}"
              f"{p['faces_detected']['rate']:3.0f}", file=sys.stderr)
    print(f"report: {results['paths']['html']}  ({results['timings']['total']:.0f} s)", file=sys.stderr)
    reporter.result(**results["paths"], seconds=results["timings"]["total"])
    return 0
