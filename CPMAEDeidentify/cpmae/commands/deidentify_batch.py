"""``cpmae deidentify-batch IN_DIR OUT_DIR``: a folder or BIDS dataset, resumable and shardable.

Exit status: 0 when every case of this shard is ok and passed its self-check, else the number of
failed plus flagged cases capped at 100; 101 when the batch could not run at all (missing input folder, no images, unwritable
output, weights refused); 130 when cancelled. Details in docs/batch.md.
"""
from __future__ import annotations

import sys

from cpmae.device import DEVICE_HELP
from cpmae.geometry import DEFAULT_RESOLUTION, GRIDS, describe_grids


def register(sub) -> None:
    p = sub.add_parser(
        "deidentify-batch",
        help="de-identify every image of a folder or BIDS dataset (resumable, shardable)",
        description="De-identify every image of IN_DIR (a flat folder or a BIDS dataset) into OUT_DIR. "
        "Rerun the same command after a crash or kill to finish the remaining cases.",
    )
    p.add_argument("in_dir", metavar="IN_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, choices=sorted(GRIDS),
                   help="model grid: " + describe_grids(DEFAULT_RESOLUTION))
    p.add_argument("--weights", default=None, help="weights bundle name or path (default: the bundled one)")
    p.add_argument("--seed", type=int, default=0, help="base seed; per-subject seeds are derived from it "
                   "unless --pseudonym-key is given")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--shard", default=None, metavar="i/n",
                   help="process only shard i of n (0 <= i < n), e.g. $SLURM_ARRAY_TASK_ID/8")
    p.add_argument("--overwrite", action="store_true",
                   help="redo every case and replace existing outputs (default: resume, refuse foreign files)")
    p.add_argument("--pseudonym-key", default=None, metavar="KEY|@FILE",
                   help="secret key for per-subject seeds (or @file holding it; or $CPMAE_PSEUDONYM_KEY)")
    p.add_argument("--max-attempts", type=int, default=2,
                   help="give up on a case after this many interrupted attempts in a row (default 2)")
    p.add_argument("--progress", default="auto", choices=("auto", "bar", "json", "none"),
                   help="progress display (json: one event per line on stdout, for Slicer)")
    from cpmae.commands.deidentify import add_self_check_arguments

    add_self_check_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from cpmae.batch import EXIT_BATCH_ERROR, PipelineWorker, run_batch
    from cpmae.errors import Cancelled, CPMAEError
    from cpmae.progress import Reporter
    from cpmae.pseudonym import parse_shard

    reporter = Reporter(args.progress)
    try:
        shard = parse_shard(args.shard) if args.shard is not None else None
        summary = run_batch(
            args.in_dir, args.out_dir, resolution=args.resolution, weights=args.weights, seed=args.seed,
            steps=args.steps, device=args.device, shard=shard, overwrite=args.overwrite,
            pseudonym_key=args.pseudonym_key, max_attempts=max(1, args.max_attempts), reporter=reporter,
            process_case=PipelineWorker(args.self_check, args.on_flag, max(0, args.retries)))
    except Cancelled:
        raise
    except CPMAEError as exc:
        print(f"cpmae: error: {exc}", file=sys.stderr)
        return EXIT_BATCH_ERROR
    for case_id, error in summary.failed:
        print(f"cpmae: failed: {error}", file=sys.stderr)
    for case_id in summary.flagged:
        print(f"cpmae: flagged by the self-check: {case_id} (see `cpmae review`)", file=sys.stderr)
    print(f"cpmae deidentify-batch: {summary.total} cases ({summary.layout}): {summary.ok} done now, "
          f"{summary.already_done} already done, {len(summary.failed)} failed, {len(summary.flagged)} flagged "
          f"by the self-check; manifest {summary.manifest}", file=sys.stderr)
    reporter.result(cases=summary.total, ok=summary.ok, already_done=summary.already_done,
                    failed=len(summary.failed), flagged=len(summary.flagged), manifest=str(summary.manifest))
    return summary.exit_code
