"""Training records a person and a script can both read: metrics.jsonl and loss_curve.png."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

METRICS = "metrics.jsonl"
CURVE = "loss_curve.png"


class MetricsLog:
    """Append-only JSON-lines log; on resume, records past the resumed step are dropped."""

    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.path = Path(run_dir) / METRICS
        if resume_step and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_name(f".{METRICS}.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.path)
        elif not resume_step and self.path.exists():
            self.path.unlink()

    def write(self, record: Dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> List[Dict]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
    return out


def plot_curves(run_dir: Path) -> Path:
    """Training loss (and validation metrics, if any) against step, as a PNG next to the log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / METRICS) if (run_dir / METRICS).is_file() else []
    train = [r for r in records if "loss" in r]
    val = [r for r in records if any(k.startswith("val_") for k in r)]
    val_keys = sorted({k for r in val for k in r if k.startswith("val_")})
    fig, axes = plt.subplots(1, 2 if val_keys else 1, figsize=(10 if val_keys else 5, 3.5), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax.set_xlabel("step"), ax.set_ylabel("training loss"), ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if val_keys:
        ax = axes[0][1]
        for k in val_keys:
            pts = [(r["step"], r[k]) for r in val if k in r]
            ax.plot(*zip(*pts), marker="o", ms=3, label=k)
        ax.set_xlabel("step"), ax.set_title("validation"), ax.legend(fontsize=7), ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / CURVE
    tmp = run_dir / f".{CURVE}.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
    return out
