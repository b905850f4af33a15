"""Python packages the engine needs, installed into Slicer's Python on first use, with consent.

Never at import time or in the module constructor: Slicer must start fast and offline, and a
user must agree before gigabytes (torch) are downloaded.

What is installed is pinned (``REQUIREMENTS``) and goes through Slicer's documented API of the
running release: ``slicer.packaging.pip_ensure`` where it exists (Slicer >= 5.11), else
``slicer.util.pip_install`` (5.8, 5.10). Every call carries a constraints file that pins the
packages Slicer itself ships (numpy, SimpleITK, vtk) to the versions already installed, so pip
can never replace them; torch comes from the PyTorch extension's ``PyTorchUtils`` (it picks the
CUDA build for the machine) and is pinned the same way once present. deepbet is installed
without its declared dependencies: it lists a GUI toolkit (customtkinter) and an unpinned torch
that the brain-extraction code never imports; the ones it does import are listed here.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

# import name -> pinned requirement. Versions chosen to have wheels for Python 3.9 (Slicer 5.8)
# and 3.12 (Slicer 5.10) and to work with numpy 1.26 and 2.x; SimpleITK deliberately absent.
REQUIREMENTS: Dict[str, str] = {
    "safetensors": "safetensors==0.4.5",
    "nibabel": "nibabel==5.2.1",
    "scipy": "scipy==1.13.1",
    "tqdm": "tqdm==4.67.1",
    "yaml": "pyyaml==6.0.2",
    "PIL": "pillow==10.4.0",  # the engine's own renderings (cpmae render / deidentify --render)
    "psutil": "psutil==6.1.1",  # cancel kills the engine's whole process tree
    "isal": "isal==1.7.2",  # fast gzip for .nii.gz outputs (wheels for 3.9 and 3.12; the engine falls back to zlib)
    # imported by deepbet's brain extraction (deepbet itself is installed with --no-deps)
    "pandas": "pandas==2.2.3",
    "fill_voids": "fill-voids==2.0.8",
    "cc3d": "connected-components-3d==3.21.0",
}
DEEPBET_REQUIREMENT = "deepbet==1.0.2"
TORCH_REQUIREMENT = "torch>=2.2"
# distributions Slicer (or the PyTorch extension) provides: held at the installed version
PROTECTED = ("numpy", "SimpleITK", "vtk", "torch")
REQUESTER = "CPMAEDeidentify"


def missingPackages() -> List[str]:
    """Requirements whose import name cannot be found (torch included), without importing them."""
    missing = [] if importlib.util.find_spec("torch") else [TORCH_REQUIREMENT]
    if importlib.util.find_spec("deepbet") is None:
        missing.append(DEEPBET_REQUIREMENT)
    missing += [req for name, req in REQUIREMENTS.items() if importlib.util.find_spec(name) is None]
    return missing


def installedVersion(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def constraintLines() -> List[str]:
    """``name==version`` for each protected distribution that is installed (pip must keep it)."""
    lines = []
    for name in PROTECTED:
        version = installedVersion(name)
        if version:
            lines.append(f"{name}=={version}")
    return lines


def writeConstraints(folder) -> Path:
    path = Path(folder) / "cpmae-constraints.txt"
    path.write_text("\n".join(constraintLines()) + "\n", encoding="utf-8")
    return path


def installPlan(missing: List[str], constraints: Path) -> List[List[str]]:
    """pip argument lists, in order, that install ``missing`` (torch excluded: see ``_installTorch``)."""
    plan = []
    if DEEPBET_REQUIREMENT in missing:
        plan.append([DEEPBET_REQUIREMENT, "--no-deps", "-c", str(constraints)])
    rest = [r for r in missing if r not in (DEEPBET_REQUIREMENT, TORCH_REQUIREMENT)]
    if rest:
        plan.append(rest + ["-c", str(constraints)])
    return plan


def ensureDependencies(askConsent: Callable[[str], bool]) -> bool:
    """Install what is missing if the user agrees; False when they decline. Inside Slicer only."""
    missing = missingPackages()
    if not missing:
        return True
    message = ("CPMAE needs these Python packages, which are not installed yet:\n  "
               + "\n  ".join(missing)
               + "\n\nDownload and install them now? (torch is large; this can take several minutes)"
               + "\nSlicer's own numpy, SimpleITK and VTK are kept as they are.")
    if not askConsent(message):
        return False
    if TORCH_REQUIREMENT in missing:
        _installTorch()
    with tempfile.TemporaryDirectory(prefix="cpmae-pip-") as folder:
        constraints = writeConstraints(folder)  # after torch: its version is held from now on
        for args in installPlan(missing, constraints):
            _pipInstall(args, constraints)
    still = missingPackages()
    if still:
        from cpmae.errors import CPMAEError

        raise CPMAEError("installation finished but these packages are still missing: " + ", ".join(still))
    return True


def _installTorch() -> None:
    try:
        import PyTorchUtils  # the PyTorch extension, a dependency of this extension
    except ImportError:
        _pipInstall([TORCH_REQUIREMENT], None)
        return
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])


def _pipInstall(args: List[str], constraints: Optional[Path]) -> None:
    """One pip call through the running Slicer's API (``args``: requirements and pip options)."""
    import slicer

    packaging = getattr(slicer, "packaging", None)
    requirements = [a for a in args if not a.startswith("-") and a != str(constraints)]
    if packaging is not None and hasattr(packaging, "pip_ensure") and "--no-deps" not in args:
        packaging.pip_ensure(requirements, constraints=constraints, prompt_install=False, requester=REQUESTER)
    else:
        slicer.util.pip_install(args)
