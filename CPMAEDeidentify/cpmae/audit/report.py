"""The audit's outputs: a self-contained report.html, results.json and results.csv.

The HTML is meant for a person: the privacy table (like CP-MAE Table 1, model-based row),
the utility table (like CP-GAN Table 1, Dice against the original), retrieval curves (like
CP-GAN Fig. 4 right) and a grid of face pictures per method, all embedded as PNG data so the
file can be mailed or archived alone. Every file is written to a temporary name in the
target folder and renamed.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np


UTILITY_COLUMNS = [
    ("brain_identical", "brain bit-identical"),
    ("brain_max_abs_diff", "max |Δ| in brain"),
    ("deepbet_dice", "deepbet Dice"),
    ("tissue_dice_csf", "CSF Dice"),
    ("tissue_dice_gm", "GM Dice"),
    ("tissue_dice_wm", "WM Dice"),
    ("face_present", "face present"),
    ("envelope_dice", "envelope Dice"),
]
CSV_METRICS = [k for k, _ in UTILITY_COLUMNS] + ["tissue_dice_mean"]


# ------------------------------------------------------------------------ file writing
def check_output_dir(out_dir: Path) -> None:
    """Refuse an output path that is a file or cannot be written, before any work is done."""
    from cpmae.atomic import ensure_output_dir

    ensure_output_dir(out_dir, "report folder")


def _write_bytes(path: Path, data: bytes) -> Path:
    """Same-folder temporary file + rename (``cpmae.atomic``): never a half-written report."""
    from cpmae.atomic import write_bytes_atomic

    return write_bytes_atomic(path, data)


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ----------------------------------------------------------------------------- numbers
def _finite(values) -> List[float]:
    out = []
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(float(v))
    return out


def utility_summary(per_scan: Dict[str, dict]) -> Dict[str, object]:
    """Mean ± s.d. over scans of each metric; bit-identity as a count of scans."""
    rows = [r["metrics"] for r in per_scan.values() if r.get("metrics")]
    out: Dict[str, object] = {"n": len(rows), "errors": sum(1 for r in per_scan.values() if r.get("error"))}
    if not rows:
        return out
    out["brain_identical"] = sum(1 for r in rows if r.get("brain_identical"))
    for key, _ in UTILITY_COLUMNS:
        if key == "brain_identical":
            continue
        vals = _finite(r.get(key) for r in rows)
        if key == "brain_max_abs_diff":
            out[key] = max(vals) if vals else None
        elif vals:
            out[key] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
        else:
            out[key] = None
    return out


def _fmt_pm(v, digits=3) -> str:
    if v is None:
        return "n/a"
    mean, sd = v
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


# --------------------------------------------------------------------------- figures
def retrieval_figure(privacy: Dict[str, dict]) -> bytes:
    """CP-GAN Fig. 4 (right): P(correct option within the top α) per method, 95 % bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=100)
    for name, p in privacy.items():
        c = p["retrieval"]
        line, = ax.plot(c["alpha"], c["mean"], label=name, lw=1.8, ls="--" if name == "RESCAN" else "-")
        ax.fill_between(c["alpha"], c["lo"], c["hi"], color=line.get_color(), alpha=0.15, lw=0)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("α (relative rank of the correct rendering)")
    ax.set_ylabel("P(correct within top α)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Re-identification: retrieval of the de-identified rendering")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_grid(evaluated: Dict[str, dict], subjects: List[str], label_height: int = 18) -> np.ndarray:
    """One picture: a row per method, per subject its views side by side, labelled."""
    from PIL import Image, ImageDraw

    methods = list(evaluated)
    first = evaluated[methods[0]][subjects[0]]["views"]
    v, h, w, _ = first.shape
    label_w = 110
    cell_w = v * w
    canvas = Image.new("RGB", (label_w + cell_w * len(subjects), label_height + h * len(methods)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, sid in enumerate(subjects):
        draw.text((label_w + c * cell_w + 4, 3), sid, fill=(0, 0, 0))
    for r, name in enumerate(methods):
        top = label_height + r * h
        draw.text((4, top + h // 2 - 6), name, fill=(0, 0, 0))
        for c, sid in enumerate(subjects):
            views = evaluated[name][sid]["views"]
            canvas.paste(Image.fromarray(np.concatenate(list(views), axis=1)), (label_w + c * cell_w, top))
    return np.asarray(canvas)


def _averaged_head_subjects(results: dict) -> List[str]:
    """Subjects of a generated cohort made from pydeface's averaged head (a picture of them shows nobody).

    The generated cohort alternates sources; the other source is a real person, whose (warped) face
    should not end up in a report that gets shared. Empty for any other folder.
    """
    try:
        meta = json.loads((Path(results.get("cohort") or "") / "cohort.json").read_text(encoding="utf-8"))
        return [s["subject"] for s in meta["subjects"] if s.get("source") == "pydeface-mean"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _grid_subjects(results: dict, settings) -> List[str]:
    ids = [s["id"] for s in results["scans"]]
    if settings.grid_subjects:
        chosen = [s for s in settings.grid_subjects if s in ids]
        if chosen:
            return chosen
    averaged = set(_averaged_head_subjects(results))
    preferred = [i for i in ids if i in averaged] or ids
    return preferred[: settings.max_grid_subjects]


# -------------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:0.92em}
.bad{color:#b00}img{max-width:100%}code{background:#f5f5f5;padding:0 3px}
"""


def _privacy_table(privacy: Dict[str, dict], attacks: List[dict]) -> str:
    head = "".join(f"<th>{html.escape(a['attacker'])}<br>{html.escape(a['region'])}</th>" for a in attacks)
    rows = ["<table id='privacy'><tr><th>method</th>" + head +
            "<th>faces detected % (whole head)</th><th>faces detected % (face region)</th>"
            "<th>scans</th><th>failed scans</th></tr>"]
    for name, p in privacy.items():
        failed = len(p.get("failed_scans") or [])
        cells = []
        for a in attacks:
            r = (p.get("attacks") or {}).get(a["key"])
            cells.append("<td>n/a</td>" if r is None else f"<td>{_fmt_rate(r)}</td>")
        det = "".join(f"<td>{_fmt_detect(p.get(k))}</td>" for k in ("faces_detected", "faces_detected_face_region"))
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}{det}<td>{p['n_subjects']}</td>"
                    f"<td class='{'bad' if failed else ''}'>{failed}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _fmt_rate(r: dict) -> str:
    """Identification rate, percent, with its 95 % bootstrap interval over subjects."""
    return f"{r['mean']:.0f} [{r['lo']:.0f}–{r['hi']:.0f}]"


def _fmt_detect(d: Optional[dict]) -> str:
    if not d:
        return "n/a"
    return f"{d['rate']:.0f} [{d['lo']:.0f}–{d['hi']:.0f}] ({d['found']}/{d['n']})"


def _utility_table(summaries: Dict[str, dict], picture_level: Dict[str, bool]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in UTILITY_COLUMNS)
    rows = [f"<table id='utility'><tr><th>method</th>{head}<th>errors</th></tr>"]
    for name, s in summaries.items():
        if picture_level.get(name):
            rows.append(f"<tr><td>{html.escape(name)}</td><td colspan='{len(UTILITY_COLUMNS)}' class='note'>"
                        "picture-level control: the scan is unchanged</td><td></td></tr>")
            continue
        cells = []
        for key, _ in UTILITY_COLUMNS:
            v = s.get(key)
            if key == "brain_identical":
                ok = v == s["n"] and s["n"] > 0
                cells.append(f"<td class='{'' if ok else 'bad'}'>{v if v is not None else 0}/{s['n']}</td>")
            elif key == "brain_max_abs_diff":
                cells.append(f"<td>{'n/a' if v is None else f'{v:g}'}</td>")
            else:
                cells.append(f"<td>{_fmt_pm(v)}</td>")
        err = s.get("errors", 0)
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}<td class='{'bad' if err else ''}'>{err}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _per_scan_table(results: dict) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in UTILITY_COLUMNS)
    rows = [f"<table><tr><th>method</th><th>scan</th>{head}<th>seconds</th><th>error</th></tr>"]
    for name, per in results["utility"].items():
        for sid, r in per.items():
            m = r.get("metrics") or {}
            cells = "".join(f"<td>{_cell(m.get(k))}</td>" for k, _ in UTILITY_COLUMNS)
            secs = r.get("seconds")
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(sid)}</td>{cells}"
                        f"<td>{'' if secs is None else f'{secs:.1f}'}</td>"
                        f"<td class='bad'>{html.escape(r.get('error') or '')}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "<span class='bad'>no</span>"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else "n/a"
    return html.escape(str(v))


def _skipped(skipped: Dict[str, str]) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li>{html.escape(sid)}: {html.escape(why)}</li>" for sid, why in skipped.items())
    return f"<p class='bad'>{len(skipped)} scan(s) could not be read and are not in the tables:</p><ul>{items}</ul>"


def build_html(results: dict, summaries: Dict[str, dict], grid_png: bytes, curve_png: bytes,
               grid_subjects: List[str]) -> str:
    picture_level = {m["name"]: m["picture_level"] for m in results["methods"]}
    tr = results["training"]
    settings = results["settings"]
    loss = "" if tr.get("final_loss") is None else f", triplet loss {tr.get('first_loss', float('nan')):.3f} → {tr['final_loss']:.3f}"
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in results["timings"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CPMAE de-identification audit</title>
<style>{_CSS}</style></head><body>
<h1>De-identification audit</h1>
<p>{len(results['scans'])} scans from <code>{html.escape(results['cohort'])}</code>, created
{html.escape(results['created'])} on {html.escape(results['machine'])}. Total time {results['timings'].get('total', 0):.0f} s.</p>
{_skipped(results.get('skipped') or {})}

<h2>Privacy: model-based re-identification</h2>
{_privacy_table(results['privacy'], results.get('attacks') or [])}
<p class="note">Identification rate %, mean over {settings['folds']} bootstrap folds of the scans [95 % interval].
For every scan an attacker sees its original picture and five pictures made with the same method: the scan's own
and four of other scans, in random order; it picks the one nearest by its own measure (ties broken at random).
Chance is 20 %, lower is more private. Every picture is taken in a pose fixed to the brain (each scan's brain
registered rigidly to a reference brain before the cameras are placed), so head pose and position cannot
identify. Three attackers: the <b>Siamese ResNet</b> below (frontal + profile); a real <b>face recognizer</b>
(dlib's ResNet embedding, 5-point landmarks, frontal picture; a picture where it finds no face matches nothing);
and a <b>silhouette</b> attacker who sees only the head's outline (Dice of the head masks). <b>Face region</b>:
the head cut to the region in front of and below the reference brain (eyes, nose, mouth, chin); <b>whole
head</b>: everything. <b>Faces detected</b>: frontal pictures in which dlib finds a face [95 % Wilson interval]
— a remodeled face must still be a face. ORIGINAL must be ≈ 100 % and BLACK ≈ 20 %, or the attack is broken. RESCAN is the attacker check: a simulated second scan of each original (small head motion,
intensity change, other skin threshold and camera focus); a high rate there shows the attacker recognises people,
not just identical pictures. The attacker is a Siamese ResNet (plain PyTorch) trained with a batch-hard triplet
margin loss on {tr['subjects']} subjects disjoint from the evaluated ones ({html.escape(tr['source'])}),
{tr['variants']} renderings each, {tr['steps']} steps{loss}{' (loaded from cache)' if tr.get('cached') else ''}.</p>
<img alt="retrieval curves" src="{_data_uri(curve_png)}">
<p class="note">Retrieval (CP-GAN Fig. 4 right): probability that the correct rendering is among the top α of all
{len(results['scans'])} renderings of a method, ranked by distance to the original; bands are 95 % over bootstrap
folds. The diagonal (BLACK) is optimal, a step at α = 0 (ORIGINAL) pessimal.</p>

<h2>Utility: is the scan still good for brain analysis?</h2>
{_utility_table(summaries, picture_level)}
<p class="note">Mean ± s.d. over scans, each output against the original of the same scan. <b>brain
bit-identical</b>: scans whose voxels inside the brain mask are unchanged to the bit. <b>deepbet Dice</b>: brain
extraction (deepbet) on the output vs on the original{'' if settings['deepbet'] else ' (deepbet switched off)'}.
<b>CSF/GM/WM Dice</b>: a 3-class Gaussian mixture inside each scan's own extracted brain, output vs original.
<b>face present</b>: fraction of the original's head voxels in front of the brain and below its centre that are
still head (defacing → 0, remodeling keeps a face → ≈ 1). <b>envelope Dice</b>: convex-hull head envelopes.</p>

<h2>Face renderings</h2>
<img alt="render grid" src="{_data_uri(grid_png)}">
<p class="note">Rows: methods; columns: {', '.join(html.escape(s) for s in grid_subjects)} (frontal and profile).
Brain-fixed orthographic cameras (every scan in the pose of the reference brain); every method's picture uses the skin threshold of the original.</p>

<h2>Details</h2>
<details><summary>per-scan utility</summary>{_per_scan_table(results)}</details>
<details><summary>settings and timings</summary><pre>{html.escape(json.dumps(settings, indent=2))}</pre>
<p>{html.escape(timings)}</p></details>
</body></html>
"""


def results_csv(results: dict) -> str:
    """One row per (method, scan) with the utility metrics and the method's identification rate."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = [a["key"] for a in results.get("attacks") or []]
    attack_cols = [f"{k}_{q}" for k in keys for q in ("mean", "lo", "hi")]
    w.writerow(["method", "scan", *CSV_METRICS, "seconds", "error", "identification_mean", "identification_sd",
                *attack_cols, "faces_detected_pct", "faces_detected_face_region_pct"])

    def privacy_cells(p):
        cells = [(p.get("attacks") or {}).get(k, {}).get(q, "") for k in keys for q in ("mean", "lo", "hi")]
        det = [(p.get(d) or {}).get("rate", "") for d in ("faces_detected", "faces_detected_face_region")]
        return [p.get("identification_mean", ""), p.get("identification_sd", ""), *cells, *det]

    for name, per in results["utility"].items():
        p = results["privacy"].get(name, {})
        for sid, r in per.items():
            m = r.get("metrics") or {}
            w.writerow([name, sid, *["" if m.get(k) is None else m.get(k) for k in CSV_METRICS],
                        "" if r.get("seconds") is None else round(r["seconds"], 3), r.get("error") or "",
                        *privacy_cells(p)])
    for name, p in results["privacy"].items():
        if name not in results["utility"]:
            w.writerow([name, "ALL", *[""] * len(CSV_METRICS), "", "", *privacy_cells(p)])
    return buf.getvalue()


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _finite_json(o):
    """NaN/inf become null: results.json stays standard JSON that any reader accepts."""
    if isinstance(o, dict):
        return {k: _finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_json(v) for v in o]
    if isinstance(o, (float, np.floating)) and not math.isfinite(float(o)):
        return None
    return o


def write_report(out_dir: Path, results: dict, evaluated: Dict[str, dict], settings,
                 grid_subjects: Optional[List[str]] = None) -> Dict[str, Path]:
    """Write report.html, results.json, results.csv, render_grid.png and retrieval.png into ``out_dir``."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    subjects = grid_subjects or _grid_subjects(results, settings)
    summaries = {name: utility_summary(per) for name, per in results["utility"].items()}
    results["utility_summary"] = summaries
    grid_png = png_bytes(render_grid(evaluated, subjects))
    curve_png = retrieval_figure(results["privacy"])
    paths = {
        "json": out_dir / "results.json",
        "csv": out_dir / "results.csv",
        "grid": out_dir / "render_grid.png",
        "curves": out_dir / "retrieval.png",
        "html": out_dir / "report.html",
    }
    _write_bytes(paths["json"], json.dumps(_finite_json(results), indent=2, default=_json_default, allow_nan=False).encode())
    _write_bytes(paths["csv"], results_csv(results).encode())
    _write_bytes(paths["grid"], grid_png)
    _write_bytes(paths["curves"], curve_png)
    _write_bytes(paths["html"], build_html(results, summaries, grid_png, curve_png, subjects).encode("utf-8"))
    return paths
