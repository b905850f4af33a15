"""The cases of a batch output folder as the review page sees them, and where a decision is written.

Qt- and trame-free so that it is tested in milliseconds. Everything comes from the batch's own
records (``OUT_DIR/logs/manifest*.jsonl``, ``cpmae.batch``): a case's latest outcome, its
self-check (``cpmae.selfcheck``), its recorded input path, and its review decisions.

A decision is one more event in the manifest that holds the case's latest outcome
(``{"case", "status": "reviewed", "decision": "approved"|"rejected", "reason", "time"}``; the
batch ignores this status when it resumes) and a ``review`` field in the output's provenance
record. Both files are rewritten whole through ``cpmae.atomic`` (a reader sees the old file or
the new one), the manifest under its lock, so a decision is refused while a batch is writing it.
Output paths come from the manifest and must resolve inside ``OUT_DIR``; anything else is refused.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from cpmae import locks
from cpmae.atomic import write_bytes_atomic, write_text_atomic
from cpmae.batch import LOG_DIR
from cpmae.errors import InputError, OutputError
from cpmae.provenance import provenance_path

DECISIONS = ("approved", "rejected")
REVIEWED = "reviewed"
OUTCOMES = ("ok", "failed", "cancelled")


@dataclass
class Case:
    """One case of the batch: its latest outcome, self-check and decision."""

    case: str
    status: str  # ok | failed | cancelled | started (killed mid-case)
    output: Optional[str] = None  # relative to OUT_DIR, as recorded
    input: Optional[str] = None  # the recorded input path (may be gone)
    error: Optional[str] = None
    self_check: Optional[Dict[str, Any]] = None
    decision: Optional[str] = None
    reason: str = ""
    manifest: Optional[Path] = None  # the manifest file holding the latest outcome
    problems: List[str] = field(default_factory=list)  # e.g. output path refused

    @property
    def flagged(self) -> List[str]:
        return list((self.self_check or {}).get("flagged") or [])

    @property
    def check_state(self) -> str:
        """'passed', 'flagged' or 'not checked'."""
        if not self.self_check:
            return "not checked"
        return "flagged" if self.flagged else "passed"

    def needs_look(self) -> bool:
        """Flagged by its self-check, failed, or not checked: what 'flagged only' shows."""
        return self.status != "ok" or self.check_state != "passed"

    def row(self) -> Dict[str, Any]:
        """JSON-able summary for the page's table."""
        checks = (self.self_check or {}).get("checks") or {}
        return {"case": self.case, "status": self.status, "check": self.check_state,
                "flagged": ", ".join(self.flagged), "decision": self.decision or "", "reason": self.reason,
                "needs_look": self.needs_look(), "error": self.error or "",
                "checks": [{"name": k, "result": c.get("result"), "value": c.get("value"), "limit": c.get("limit")}
                           for k, c in checks.items()]}


def logs_dir(out_dir: Union[str, Path]) -> Path:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError("not a folder", path=out_dir)
    logs = out_dir / LOG_DIR
    if not any(logs.glob("manifest*.jsonl")):
        raise InputError("not a batch output folder (no logs/manifest*.jsonl; made by `cpmae deidentify-batch`)",
                         path=out_dir)
    return logs


def _records(path: Path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(rec, dict) and isinstance(rec.get("case"), str) and "status" in rec:
                yield rec


def load_cases(out_dir: Union[str, Path]) -> List[Case]:
    """Every case recorded in the batch's manifests, sorted by case id."""
    out_dir = Path(out_dir)
    cases: Dict[str, Case] = {}
    for path in sorted(logs_dir(out_dir).glob("manifest*.jsonl")):
        for rec in _records(path):
            c = cases.setdefault(rec["case"], Case(rec["case"], "started"))
            status = rec["status"]
            if status == REVIEWED and rec.get("decision") in DECISIONS:
                c.decision, c.reason = rec["decision"], str(rec.get("reason") or "")
            elif status == "started" and c.status in OUTCOMES:
                c.status = "started"
            elif status in OUTCOMES:
                c.status, c.manifest = status, path
                c.error = rec.get("error")
                if rec.get("output"):
                    c.output = rec["output"]
                if status == "ok":
                    c.self_check = rec.get("self_check")
                    c.input = rec.get("input")
    for c in cases.values():
        if c.output:
            try:
                output_path(out_dir, c)
            except OutputError as exc:
                c.problems.append(str(exc))
    return [cases[k] for k in sorted(cases)]


def output_path(out_dir: Union[str, Path], case: Case) -> Path:
    """The case's output image, refused unless it resolves inside ``OUT_DIR``."""
    root = Path(out_dir).resolve()
    if not case.output:
        raise OutputError(f"case {case.case} has no output", path=root)
    target = (root / case.output).resolve()
    if target == root or root not in target.parents:
        raise OutputError(f"refused: output of case {case.case} resolves outside the output folder",
                          path=root / case.output)
    return target


def input_path(case: Case) -> Optional[Path]:
    """The recorded input when it still exists (the 'before' view), else None."""
    if not case.input:
        return None
    p = Path(case.input)
    return p if p.is_file() else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_decision(out_dir: Union[str, Path], case_id: str, decision: str, reason: str = "") -> Dict[str, Any]:
    """Write ``decision`` for ``case_id`` to its manifest and its provenance record; return the event."""
    if decision not in DECISIONS:
        raise InputError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    reason = " ".join(str(reason or "").split())[:500]  # one line
    out_dir = Path(out_dir)
    by_id = {c.case: c for c in load_cases(out_dir)}
    case = by_id.get(case_id)
    if case is None or case.manifest is None:
        raise InputError(f"no finished case {case_id!r} in this batch", path=out_dir)
    event = {"case": case_id, "status": REVIEWED, "decision": decision, "reason": reason, "time": _now()}
    prov = provenance_path(output_path(out_dir, case)) if case.status == "ok" else None  # refused before writing
    manifest = case.manifest
    if manifest.parent.resolve() != (out_dir / LOG_DIR).resolve():
        raise OutputError("refused: manifest outside the output folder", path=manifest)
    with open(manifest, "rb") as fh:
        try:
            locks.lock(fh)
        except OSError:
            raise OutputError("a deidentify-batch run is writing this manifest; decide when it has finished",
                              path=manifest) from None
        data = fh.read()
        if data and not data.endswith(b"\n"):
            data += b"\n"
        if not locks.REPLACE_WHILE_OPEN:
            fh.close()  # Windows cannot rename over an open file: the lock ends a moment early there
        write_bytes_atomic(manifest, data + (json.dumps(event) + "\n").encode("utf-8"))
    if prov is not None:
        if prov.is_file():
            rec = json.loads(prov.read_text(encoding="utf-8"))
            rec["review"] = {"decision": decision, "reason": reason, "time": event["time"]}
            write_text_atomic(prov, json.dumps(rec, indent=2) + "\n")
    return event


def counts(cases: List[Case]) -> Dict[str, int]:
    """Numbers for the page's header and the report."""
    return {
        "cases": len(cases),
        "ok": sum(c.status == "ok" for c in cases),
        "failed": sum(c.status in ("failed", "cancelled", "started") for c in cases),
        "passed": sum(c.status == "ok" and c.check_state == "passed" for c in cases),
        "flagged": sum(c.status == "ok" and c.check_state == "flagged" for c in cases),
        "not_checked": sum(c.status == "ok" and c.check_state == "not checked" for c in cases),
        "approved": sum(c.decision == "approved" for c in cases),
        "rejected": sum(c.decision == "rejected" for c in cases),
        "undecided": sum(c.decision is None for c in cases),
    }

