"""Face QA for a radiologist: the before/after layout and the approve / reject record.

The layout puts the input and the result side by side three times: 3D skin renderings with
linked cameras, sagittal slices and axial slices (linked, so scrolling one scrolls its pair).
Slices show what a frontal 3D view hides: the skull's resolution, a seam at the brain-mask edge.

A decision is stored where the result lives: as attributes of the output node (saved with the
scene) and, for a file written by the engine (``cpmae deidentify`` / ``deidentify-batch``), in its
provenance JSON under ``review`` (same atomic write as the engine's). A rejection needs a
reason, so a later reader knows what to look for.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Dict, Optional

LAYOUT_ID = 50061  # a custom layout number, away from Slicer's built-in ones
BEFORE_SLICES = ("CPMAEBeforeSagittal", "CPMAEBeforeAxial")
AFTER_SLICES = ("CPMAEAfterSagittal", "CPMAEAfterAxial")
REASONS = ("face recognisable", "ears remain", "artefact", "brain clipped")
ATTRIBUTE_PREFIX = "CPMAE.review."


def _sliceView(name: str, orientation: str, colour: str) -> str:
    return (f'<item><view class="vtkMRMLSliceNode" singletontag="{name}">'
            f'<property name="orientation" action="default">{orientation}</property>'
            f'<property name="viewlabel" action="default">{name[5:6]}{orientation[0]}</property>'
            f'<property name="viewcolor" action="default">{colour}</property>'
            f'<property name="viewgroup" action="default">1</property></view></item>')


def _threeDView(tag: str, label: str) -> str:
    return (f'<item><view class="vtkMRMLViewNode" singletontag="{tag}">'
            f'<property name="viewlabel" action="default">{label}</property>'
            f'<property name="viewgroup" action="default">1</property></view></item>')


def layoutXml() -> str:
    """Rows: 3D before | 3D after; sagittal before | after; axial before | after."""
    rows = [
        _threeDView("1", "B") + _threeDView("2", "A"),
        _sliceView(BEFORE_SLICES[0], "Sagittal", "#F0C020") + _sliceView(AFTER_SLICES[0], "Sagittal", "#F0C020"),
        _sliceView(BEFORE_SLICES[1], "Axial", "#F34A33") + _sliceView(AFTER_SLICES[1], "Axial", "#F34A33"),
    ]
    return ('<layout type="vertical" split="true">'
            + "".join(f'<item><layout type="horizontal">{row}</layout></item>' for row in rows)
            + "</layout>")


def registerLayout(layoutNode) -> None:
    """Add (or refresh) the Face QA layout on a vtkMRMLLayoutNode."""
    if layoutNode.IsLayoutDescription(LAYOUT_ID):
        layoutNode.SetLayoutDescription(LAYOUT_ID, layoutXml())
    else:
        layoutNode.AddLayoutDescription(LAYOUT_ID, layoutXml())


def sliceVolumes(before, after) -> Dict[str, object]:
    """Which volume each Face QA slice view shows."""
    return {**{name: before for name in BEFORE_SLICES}, **{name: after for name in AFTER_SLICES}}


def decisionRecord(approved: bool, reason: str = "", now: Optional[_dt.datetime] = None) -> dict:
    """{"decision": "approved"|"rejected", "reason", "time"}; a rejection without a reason is refused."""
    reason = (reason or "").strip()
    if not approved and not reason:
        raise ValueError("a rejection needs a reason (e.g. " + ", ".join(REASONS) + ")")
    when = (now or _dt.datetime.now(_dt.timezone.utc)).replace(microsecond=0).isoformat()
    return {"decision": "approved" if approved else "rejected", "reason": reason, "time": when}


def recordDecision(outputNode, approved: bool, reason: str = "", provenanceFile=None) -> dict:
    """Store the decision on the output node (and in ``provenanceFile`` when given); returns it."""
    record = decisionRecord(approved, reason)
    if outputNode is not None:
        for key, value in record.items():
            outputNode.SetAttribute(ATTRIBUTE_PREFIX + key, value)
    if provenanceFile is not None:
        writeDecision(provenanceFile, record)
    return record


def nodeDecision(outputNode) -> Optional[dict]:
    """The decision stored on a node, or None when it was not reviewed."""
    decision = outputNode.GetAttribute(ATTRIBUTE_PREFIX + "decision") if outputNode is not None else None
    if not decision:
        return None
    return {key: outputNode.GetAttribute(ATTRIBUTE_PREFIX + key) or "" for key in ("decision", "reason", "time")}


def writeDecision(provenanceFile, record: dict) -> None:
    """Add ``review`` to an engine provenance JSON (atomic rewrite; other fields untouched)."""
    from cpmae.atomic import write_text_atomic
    from cpmae.errors import OutputError

    path = Path(provenanceFile)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot read the provenance record ({exc})", path=path) from exc
    if not isinstance(data, dict):
        raise OutputError("the provenance record is not a JSON object", path=path)
    data["review"] = dict(record)
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def readPng(path):
    """RGB uint8 [H, W, 3] of a PNG, top row first (VTK's reader: no PIL needed inside Slicer)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]


def faceRegion(view: str, shape):
    """Where the face is in a ``cpmae.render`` picture of ``view`` (rows, columns slices).

    Frontal: the central half. Profiles: the third of the picture the face points to (the
    subject's right profile has the face on the picture's right). From below: the upper half.
    """
    h, w = shape[:2]
    if view in ("profile", "profile_right"):
        return slice(h // 5, 9 * h // 10), slice(2 * w // 3, w)
    if view == "profile_left":
        return slice(h // 5, 9 * h // 10), slice(0, w // 3)
    if view == "below":
        return slice(0, h // 2), slice(w // 4, 3 * w // 4)
    return slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4)


def faceRegionDifference(before, after, view: str) -> float:
    """Mean absolute RGB difference of two same-camera pictures inside the face region."""
    import numpy as np

    region = faceRegion(view, before.shape)
    return float(np.abs(before[region].astype(float) - after[region].astype(float)).mean())


# ---------------------------------------------------------------------------------------------
# Batch review queue: a deidentify-batch output folder, case by case
# ---------------------------------------------------------------------------------------------

POSITION_FILE = "slicer-review-position.json"  # in the batch's logs folder, next to its manifests


class BatchQueue:
    """The cases of a ``deidentify-batch`` output folder, one at a time, resumable.

    Cases and decisions come from ``cpmae.review.cases`` (the review page's reader and writer):
    a decision is one more ``reviewed`` event in the case's manifest plus a ``review`` field in
    its provenance record, so the page, the report and the panel see the same decisions. The
    reader's position is saved after every move and restored when the folder is opened again.
    Thumbnails are PNGs in ``thumbnailsDir`` whose name starts with the output's file stem
    (e.g. ``cpmae deidentify --render`` pictures).
    """

    def __init__(self, outDir, thumbnailsDir=None):
        from cpmae.review import cases as reviewCases

        self._cases = reviewCases
        self.outDir = Path(outDir)
        self.thumbnailsDir = Path(thumbnailsDir) if thumbnailsDir else None
        self.cases = reviewCases.load_cases(self.outDir)
        if not self.cases:
            from cpmae.errors import InputError

            raise InputError("no deidentify-batch cases here (no logs/manifest*.jsonl)", path=self.outDir)
        self.index = self._savedIndex()

    # -- position ----------------------------------------------------------------------------
    def _positionPath(self) -> Path:
        return self._cases.logs_dir(self.outDir) / POSITION_FILE

    def _savedIndex(self) -> int:
        try:
            saved = json.loads(self._positionPath().read_text(encoding="utf-8")).get("case")
        except (OSError, ValueError, AttributeError):
            saved = None
        ids = [c.case for c in self.cases]
        if saved in ids:
            return ids.index(saved)
        undecided = [i for i, c in enumerate(self.cases) if c.decision is None]
        return undecided[0] if undecided else 0

    def _savePosition(self) -> None:
        from cpmae.atomic import write_text_atomic

        write_text_atomic(self._positionPath(), json.dumps({"case": self.current.case}) + "\n")

    # -- navigation --------------------------------------------------------------------------
    @property
    def current(self):
        return self.cases[self.index]

    def move(self, step: int):
        """Next (+1) / previous (-1) case, stopping at the ends; the position is saved."""
        self.index = max(0, min(len(self.cases) - 1, self.index + step))
        self._savePosition()
        return self.current

    def goTo(self, index: int):
        self.index = max(0, min(len(self.cases) - 1, int(index)))
        self._savePosition()
        return self.current

    def nextUndecided(self):
        """The first undecided case after the current one (wrapping), or the current one."""
        n = len(self.cases)
        for step in range(1, n + 1):
            if self.cases[(self.index + step) % n].decision is None:
                return self.goTo((self.index + step) % n)
        return self.current

    # -- what the panel shows ----------------------------------------------------------------
    def outputPath(self, case=None) -> Optional[Path]:
        case = case or self.current
        if case.status != "ok":
            return None
        return self._cases.output_path(self.outDir, case)

    def inputPath(self, case=None) -> Optional[Path]:
        return self._cases.input_path(case or self.current)

    def thumbnails(self, case=None) -> list:
        output = self.outputPath(case)
        if output is None or self.thumbnailsDir is None or not self.thumbnailsDir.is_dir():
            return []
        from cpmae.dataset import strip_image_suffix

        stem = strip_image_suffix(output.name)
        return sorted(p for p in self.thumbnailsDir.glob("*.png") if p.name.startswith(stem))

    def rows(self) -> list:
        """(case, status, self-check, decision, reason) per case, for the panel's table."""
        return [(c.case, c.status, c.check_state, c.decision or "", c.reason) for c in self.cases]

    # -- decisions ---------------------------------------------------------------------------
    def decide(self, approved: bool, reason: str = "") -> dict:
        """Record the decision for the current case (manifest + provenance) and move on."""
        record = decisionRecord(approved, reason)  # a rejection needs a reason
        event = self._cases.record_decision(self.outDir, self.current.case, record["decision"], record["reason"])
        self.current.decision, self.current.reason = event["decision"], event["reason"]
        return event
