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

from CPMAEDeidentifyLib import jobs

STAGES = (  # (run folder name, cpmae train arguments)
    ("brain_tokenizer", ["tokenizer", "--part", "brain"]),
    ("nonbrain_tokenizer", ["tokenizer", "--part", "nonbrain"]),
    ("prior", ["prior"]),
)


@dataclass
class TrainingSettings:
    dataFolder: str  # a folder from `cpmae prepare` / `cpmae encode`, or "cohort" for generated subjects
    outputFolder: str
    resolution: int = 128
    steps: int = 1000
    device: str = "auto"


def readLoss(runFolder: Path) -> List[tuple]:
    """(step, loss) pairs of a run so far; tolerant of a line being written right now."""
    path = Path(runFolder) / "metrics.jsonl"
    points = []
    if not path.is_file():
        return points
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "loss" in record and "step" in record:
            points.append((int(record["step"]), float(record["loss"])))
    return points


def listCheckpoints(outputFolder) -> List[Path]:
    """Complete checkpoints of every run under the output folder, oldest first per run."""
    found = []
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

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.cancel()
        self.state = jobs.CANCELLED

    def lossCurve(self) -> List[tuple]:
        return readLoss(self.runFolder(self.stage))
