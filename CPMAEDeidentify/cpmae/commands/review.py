"""``cpmae review OUT_DIR``: a local review page over a batch output folder, or its static report."""
from __future__ import annotations

import sys

TUNNEL_HINT = ("On a remote server, reach it from your own machine through an SSH tunnel:\n"
               "  ssh -N -L {port}:localhost:{port} USER@SERVER\n"
               "then open http://localhost:{port}/ in your browser.")


def register(sub) -> None:
    p = sub.add_parser("review", help="review a batch output folder in a browser (or --export a static report)",
                       description="Serve a local web page over the output folder of `cpmae deidentify-batch`: "
                       "cases, self-check results, before/after 3D views and slices, approve/reject with a reason "
                       "(written to the manifest and the provenance records).")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder of cpmae deidentify-batch")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; use an SSH tunnel)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--export", default=None, metavar="REPORT.html",
                   help="write a static HTML summary (counts, flagged cases with thumbnails, decisions) and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from cpmae.review.cases import logs_dir

    logs_dir(args.out_dir)  # one clear line (exit 2) when this is not a batch output folder
    if args.export:
        from cpmae.review.report import write_report

        path, counts = write_report(args.out_dir, args.export)
        print(f"wrote {path}: {counts['cases']} cases, {counts['flagged']} flagged, {counts['failed']} failed, "
              f"{counts['approved']} approved, {counts['rejected']} rejected", file=sys.stderr)
        return 0
    from cpmae.review.app import serve

    print(f"cpmae review: serving {args.out_dir} on http://{args.host}:{args.port}/", file=sys.stderr)
    if args.host in ("127.0.0.1", "localhost", "::1"):
        print(TUNNEL_HINT.format(port=args.port), file=sys.stderr)
    else:
        print(f"warning: bound to {args.host}: anyone who can reach this address sees the faces of the inputs",
              file=sys.stderr)
    sys.stderr.flush()
    serve(args.out_dir, host=args.host, port=args.port)
    return 0
