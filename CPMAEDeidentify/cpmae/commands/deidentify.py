"""``cpmae deidentify IN OUT``: remodel the face and skull of one scan, keep the brain bit-identical."""
from __future__ import annotations

from pathlib import Path

from cpmae.device import DEVICE_HELP
from cpmae.geometry import DEFAULT_RESOLUTION, GRIDS, describe_grids


def add_model_arguments(p) -> None:
    """Options shared by every command that runs the model (deidentify, demo, batch)."""
    p.add_argument("--weights", default=None,
                   help="weights bundle folder or shipped name (default: demo-<resolution>)")
    p.add_argument("--resolution", type=int, choices=sorted(GRIDS), default=DEFAULT_RESOLUTION,
                   help="model grid: " + describe_grids(DEFAULT_RESOLUTION))
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the bundle's, 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed -> same face (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-envelope", dest="envelope", action="store_false",
                   help="do not limit the generated head to the input head's convex hull")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                   help="progress bars on a terminal; json = one JSON object per line on stdout (for Slicer)")


def add_self_check_arguments(p) -> None:
    """The per-scan self-check's options (``cpmae.selfcheck``), shared by deidentify and deidentify-batch."""
    p.add_argument("--no-self-check", dest="self_check", action="store_false",
                   help="skip the per-scan self-check (identity distance, face present, seam, brain, changed)")
    p.add_argument("--on-flag", choices=("mark", "retry", "fail"), default="mark",
                   help="a flagged output is: written and marked (default); retried with the next seeds; "
                   "or failed with no output written")
    p.add_argument("--retries", type=int, default=2, help="with --on-flag retry: extra seeds to try (default 2)")


def register(sub) -> None:
    p = sub.add_parser("deidentify", help="de-identify one scan (NIfTI, NRRD, MHA or DICOM folder)",
                       description="Remodel skull and face with the CP-MAE token model; every brain voxel of "
                       "the output is bit-identical to the input and no other input voxel is copied.")
    p.add_argument("input", help="input scan: .nii/.nii.gz/.nrrd/.mha or a DICOM series folder")
    p.add_argument("output", help="output scan (.nii.gz or .nrrd); never overwritten unless --overwrite")
    p.add_argument("--mask", default=None, help="brain mask on the input grid (default: computed with deepbet)")
    p.add_argument("--mask-out", default=None, help="also write the brain mask used here")
    p.add_argument("--render", default=None, metavar="DIR", help="write before/after face renderings (PNG) here")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_model_arguments(p)
    add_self_check_arguments(p)
    p.set_defaults(func=run)


def print_timings(timings: dict, stream=None) -> None:
    import sys

    stream = stream or sys.stderr
    width = max(len(k) for k in timings)
    for k, v in timings.items():
        print(f"  {k:<{width}}  {v:7.2f} s", file=stream)


def render_before_after(before, after, out_dir: Path, stem: str = "face") -> list:
    """Before/after frontal and profile renderings plus a 2×2 comparison figure."""
    from cpmae.render import before_after_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    return before_after_figure(before, after, out_dir / f"{stem}_before_after.png", singles=True)


def run(args) -> int:
    import sys

    from cpmae.pipeline import deidentify_file
    from cpmae.progress import Reporter

    rep = Reporter(args.progress)
    if args.render:
        # fail before the long job if the render folder is unusable
        Path(args.render).mkdir(parents=True, exist_ok=True)
    res = deidentify_file(args.input, args.output, mask_path=args.mask, mask_out=args.mask_out,
                          weights=args.weights, resolution=args.resolution, steps=args.steps, seed=args.seed,
                          device=args.device, overwrite=args.overwrite, reporter=rep, envelope=args.envelope,
                          self_check=args.self_check, on_flag=args.on_flag, retries=args.retries)
    renders = []
    if args.render:
        from cpmae.io import read_image

        with rep.stage("render"):
            renders = render_before_after(read_image(args.input), res.image, Path(args.render))
    rep.result(output=str(args.output), mask=args.mask_out, renders=[str(r) for r in renders],
               timings={k: round(v, 3) for k, v in rep.timings.items()}, info=res.info)
    if args.progress != "json":
        print(f"wrote {args.output}", file=sys.stderr)
        if args.mask_out:
            print(f"wrote {args.mask_out} (brain mask, {res.info['brain_volume_cm3']} cm³)", file=sys.stderr)
        for r in renders:
            print(f"wrote {r}", file=sys.stderr)
        check = res.info.get("self_check")
        if check is not None:
            from cpmae.selfcheck import summary_line

            verdict = "passed" if check["passed"] else f"FLAGGED ({', '.join(check['flagged'])})"
            print(f"self-check {verdict}: {summary_line(check)}", file=sys.stderr)
        print_timings(rep.timings)
    return 0
