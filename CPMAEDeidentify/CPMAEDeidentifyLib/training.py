"""Training from the panel: the three networks in order, then a weights bundle.

A CP-MAE bundle needs a brain tokenizer, a non-brain tokenizer and the conditional prior,
so "Start" runs ``cpmae train`` three times (each into its own run folder under the output
folder) and "use this model" exports chosen checkpoints with ``cpmae export``. Each stage is
an out-of-process job; Stop kills it (the engine checkpoints atomically, so the last complete
checkpoint survives) and Resume continues every unfinished run with ``--resume``.
The live loss curve is read from each run's ``metrics.jsonl``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from cpmae.geometry import GRIDS, QUICK_RESOLUTION
from CPMAEDeidentifyLib import jobs

# the panel's grid choice (parameter node Choice and combo items): the widget file must not import
# the engine itself (Testing/mrml/test_packaging.py), so it takes them from here
GRID_CHOICES = [str(g) for g in GRIDS]
DEFAULT_GRID_CHOICE = str(QUICK_RESOLUTION)

STAGES = (  # (run folder name, cpmae train arguments)
    ("brain_tokenizer", ["tokenizer", "--part", "brain"]),
    ("nonbrain_tokenizer", ["tokenizer", "--part", "nonbrain"]),
    ("prior", ["prior"]),
)


@dataclass
class TrainingSettings:
    dataFolder: str  # a folder from `cpmae prepare` / `cpmae encode`, or "cohort" for generated subjects
    outputFolder: str
    resolution: int = QUICK_RESOLUTION
    steps: int = 1000
    device: str = "auto"


def _parseLoss(lines) -> List[tuple]:
    points = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "loss" in record and "step" in record:
            points.append((int(record["step"]), float(record["loss"])))
    return points


def readLoss(runFolder: Path) -> List[tuple]:
    """(step, loss) pairs of a run so far (whole file; see ``LossTail`` for the live curve)."""
    path = Path(runFolder) / "metrics.jsonl"
    if not path.is_file():
        return []
    return _parseLoss(path.read_text(encoding="utf-8", errors="replace").splitlines())


class LossTail:
    """The live loss curve of one run, reading only what was appended since the last call.

    The panel polls every 100 ms for hours; re-reading a growing ``metrics.jsonl`` each time
    would grow with the run. A half-written last line is kept until its newline arrives.
    """

    def __init__(self, runFolder: Path):
        self.path = Path(runFolder) / "metrics.jsonl"
        self.points: List[tuple] = []
        self._offset = 0
        self._partial = b""

    def read(self) -> List[tuple]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return self.points
        if size < self._offset:  # the file was replaced (a fresh run): start over
            self.points, self._offset, self._partial = [], 0, b""
        if size > self._offset:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(size - self._offset)
            self._offset += len(chunk)
            data = self._partial + chunk
            lines = data.split(b"\n")
            self._partial = lines.pop()  # b"" after a complete line
            self.points += _parseLoss(line.decode("utf-8", errors="replace") for line in lines)
        return self.points


def listCheckpoints(outputFolder) -> List[Path]:
    """Complete checkpoints of every run under the output folder, oldest first per run."""
    found = []
    if not outputFolder:
        return found
    for name, _ in STAGES:
        folder = Path(outputFolder) / name / "checkpoints"
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-"))
    return found


def hasCheckpoint(runFolder: Path) -> bool:
    folder = Path(runFolder) / "checkpoints"
    return folder.is_dir() and any(p.name.startswith("step-") for p in folder.iterdir())


def trainCommand(settings: TrainingSettings, stage: int, resume: bool) -> List[str]:
    name, args = STAGES[stage]
    out = Path(settings.outputFolder)
    command = ["train", *args, "--out", str(out / name), "--resolution", str(settings.resolution),
               "--steps", str(int(settings.steps)), "--device", settings.device, "--progress", "json"]
    if settings.dataFolder:
        command += ["--data", settings.dataFolder]
    if name == "prior":
        command += ["--brain-tokenizer", str(out / "brain_tokenizer"),
                    "--nonbrain-tokenizer", str(out / "nonbrain_tokenizer")]
    if resume:
        # a resumed run keeps its saved config; only run-control flags may be given again
        command = ["train", *args, "--out", str(out / name), "--resume", "--steps", str(int(settings.steps)),
                   "--device", settings.device, "--progress", "json"]
    return jobs.engineCommand(*command)


def exportCommand(brainRun, nonbrainRun, priorRun, bundleFolder) -> List[str]:
    return jobs.engineCommand("export", str(brainRun), str(nonbrainRun), str(priorRun), "--out", str(bundleFolder),
                              "--note", "trained in the CPMAEDeidentify Slicer panel")


class TrainingSession:
    """Runs the stages one after the other; ``poll()`` from a timer, ``stop()``, ``start(resume=True)``."""

    def __init__(self, settings: TrainingSettings, onEvent: Optional[Callable[[jobs.JobEvent], None]] = None):
        self.settings = settings
        self.onEvent = onEvent
        self.stage = 0
        self.runner: Optional[jobs.JobRunner] = None
        self.state = jobs.PENDING
        self.error = ""
        self._tail: Optional[LossTail] = None

    def runFolder(self, stage: int) -> Path:
        return Path(self.settings.outputFolder) / STAGES[stage][0]

    def start(self, resume: bool = False) -> None:
        Path(self.settings.outputFolder).mkdir(parents=True, exist_ok=True)
        self.stage = 0
        if resume:  # skip stages that are already complete (their final checkpoint is at `steps`)
            while self.stage < len(STAGES) - 1 and self._finishedStage(self.stage):
                self.stage += 1
        self._launch(resume)

    def _finishedStage(self, stage: int) -> bool:
        points = readLoss(self.runFolder(stage))
        return bool(points) and points[-1][0] >= self.settings.steps and hasCheckpoint(self.runFolder(stage))

    def _launch(self, resume: bool) -> None:
        resumeThis = resume and hasCheckpoint(self.runFolder(self.stage))
        self.runner = jobs.JobRunner(trainCommand(self.settings, self.stage, resumeThis), onEvent=self.onEvent)
        self.runner.start()
        self.state = jobs.RUNNING
        self._tail = LossTail(self.runFolder(self.stage))

    def poll(self) -> bool:
        """Deliver progress; start the next stage when one succeeds. True while training."""
        if self.runner is None or self.state != jobs.RUNNING:
            return False
        if self.runner.poll():
            return True
        if self.runner.state == jobs.SUCCEEDED and self.stage < len(STAGES) - 1:
            self.stage += 1
            self._launch(resume=False)
            return True
        self.state = self.runner.state
        if self.state == jobs.FAILED:
            self.error = self.runner.errorMessage()
        return False

    def stop(self, wait: bool = False) -> None:
        """Stop the running stage (its last complete checkpoint survives); returns at once
        unless ``wait`` (the process tree is killed after a grace period by ``poll``/``wait``)."""
        if self.runner is not None:
            self.runner.cancel(wait=wait)
        self.state = jobs.CANCELLED

    def pollStop(self) -> bool:
        """After ``stop()``: True while the stopped stage's processes are still going away."""
        return self.runner is not None and self.runner.poll()

    def lossCurve(self) -> List[tuple]:
        """The current stage's curve, read incrementally (cheap enough for a 100 ms timer)."""
        if self._tail is None:
            self._tail = LossTail(self.runFolder(self.stage))
        return self._tail.read()


def exportJob(brainRun, nonbrainRun, priorRun, bundleFolder,
              onEvent: Optional[Callable[[jobs.JobEvent], None]] = None) -> jobs.JobRunner:
    """``cpmae export`` as a started job: poll it from a timer, never wait on the GUI thread."""
    return jobs.JobRunner(exportCommand(brainRun, nonbrainRun, priorRun, bundleFolder), onEvent=onEvent).start()
