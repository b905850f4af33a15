"""`cpmae review OUT_DIR --export report.html`: a static, self-contained summary of a reviewed batch.

Meant to be attached to a data-sharing request, so it shows only what may be shared: counts, every
case's status, self-check numbers and decision, and thumbnails of the *outputs* of the flagged
cases (frontal and profile skin renders, ``cpmae.render``). It never renders an input (that would
put the original faces into the attachment) and holds no input path or hash. One HTML file with
the pictures inlined, written atomically.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from cpmae import __version__
from cpmae.atomic import write_text_atomic
from cpmae.review import cases as C

THUMB_SIZE = (180, 180)

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
.flag { color: #b00020; font-weight: 600; } .pass { color: #1b7f2a; }
.case { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
.case img { background: #000; margin-right: 2px; }
"""


def _png_data_uri(rgb) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(out_dir: Path, case: C.Case) -> Tuple[List[str], Optional[str]]:
    """([frontal, profile] PNG data URIs of the case's output, or [], and a note when it cannot be shown)."""
    from cpmae.io import read_image
    from cpmae.render import render_views

    try:
        path = C.output_path(out_dir, case)
        views = render_views(read_image(path), ("frontal", "profile"), size=THUMB_SIZE)
    except Exception as exc:  # one unreadable output must not stop the report
        return [], f"no thumbnail: {exc}"
    return [_png_data_uri(views["frontal"]), _png_data_uri(views["profile"])], None


def _checks_cell(case: C.Case) -> str:
    checks = (case.self_check or {}).get("checks") or {}
    if not checks:
        return html.escape(case.check_state)
    parts = []
    for name, c in checks.items():
        cls = "flag" if c.get("result") == "flag" else "pass"
        value = "-" if c.get("value") is None else c.get("value")
        parts.append(f'<span class="{cls}">{html.escape(name)} {html.escape(str(c.get("result")))} '
                     f"({html.escape(str(value))})</span>")
    return "<br>".join(parts)


def build_report(out_dir: Union[str, Path]) -> Tuple[str, Dict[str, int]]:
    """(HTML text, counts) for the batch output folder ``out_dir``."""
    out_dir = Path(out_dir).resolve()
    cases = C.load_cases(out_dir)
    counts = C.counts(cases)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>CPMAE batch review: {e(out_dir.name)}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>CPMAE batch review: {e(out_dir.name)}</h1>",
             f"<p>Made {e(now)} by cpmae {e(__version__)} from the batch's manifest. Outputs only: no input "
             "picture, path or hash is in this file.</p>",
             "<table><tr>" + "".join(f"<th>{e(k.replace('_', ' '))}</th>" for k in counts) + "</tr><tr>"
             + "".join(f"<td>{v}</td>" for v in counts.values()) + "</tr></table>"]
    flagged = [c for c in cases if c.status == "ok" and c.check_state == "flagged"]
    parts.append(f"<h2>Flagged by the self-check ({len(flagged)})</h2>")
    if not flagged:
        parts.append("<p>None.</p>")
    for c in flagged:
        images, note = thumbnails(out_dir, c)
        parts.append(f"<div class='case'><div><b>{e(c.case)}</b>: <span class='flag'>{e(', '.join(c.flagged))}</span>"
                     f" — decision: {e(c.decision or 'none')}{(' (' + e(c.reason) + ')') if c.reason else ''}</div>")
        parts.extend(f"<img src='{src}' width='{THUMB_SIZE[0]}' height='{THUMB_SIZE[1]}' alt='output'>"
                     for src in images)
        if note:
            parts.append(f"<div>{e(note)}</div>")
        parts.append("</div>")
    # errors are left out on purpose: they name input files (see logs/ for them)
    parts.append("<h2>All cases</h2><table><tr><th>case</th><th>status</th><th>self-check</th><th>decision</th>"
                 "<th>reason</th></tr>")
    for c in cases:
        parts.append(f"<tr><td>{e(c.case)}</td><td>{e(c.status)}</td><td>{_checks_cell(c)}</td>"
                     f"<td>{e(c.decision or '')}</td><td>{e(c.reason)}</td></tr>")
    parts.append("</table></body></html>\n")
    return "\n".join(parts), counts


def write_report(out_dir: Union[str, Path], path: Union[str, Path]) -> Tuple[Path, Dict[str, int]]:
    """Write the report to ``path`` atomically; return (path, counts)."""
    text, counts = build_report(out_dir)
    path = Path(path)
    write_text_atomic(path, text)
    return path, counts
