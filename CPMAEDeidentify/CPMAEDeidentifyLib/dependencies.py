"""Python packages the engine needs, installed into Slicer's Python on first Apply, with consent.

Never at import time or in the module constructor: Slicer must start fast and offline, and a
user must agree before gigabytes (torch) are downloaded. torch comes from the PyTorch
extension's ``PyTorchUtils`` when that is installed (it picks the CUDA build that fits the
machine); everything else through ``slicer.pydeps.pip_ensure`` (Slicer >= 5.11) or
``slicer.util.pip_install``. Slicer's own SimpleITK is never replaced.
"""
from __future__ import annotations

import importlib.util
from typing import Callable, List

# import name -> pip requirement (SimpleITK deliberately absent: Slicer ships it)
REQUIREMENTS = {
    "deepbet": "deepbet>=1.0.2",
    "safetensors": "safetensors>=0.4",
    "nibabel": "nibabel>=5.0",
    "scipy": "scipy>=1.10",
    "tqdm": "tqdm>=4.60",
    "yaml": "pyyaml>=6.0",
    "PIL": "pillow>=10",  # the engine's own renderings (cpmae render / deidentify --render)
}
TORCH_REQUIREMENT = "torch>=2.2"


def missingPackages() -> List[str]:
    """Requirements whose import name cannot be found (torch included), without importing them."""
    missing = [] if importlib.util.find_spec("torch") else [TORCH_REQUIREMENT]
    missing += [req for name, req in REQUIREMENTS.items() if importlib.util.find_spec(name) is None]
    return missing


def ensureDependencies(askConsent: Callable[[str], bool]) -> bool:
    """Install what is missing if the user agrees; False when they decline. Inside Slicer only."""
    missing = missingPackages()
    if not missing:
        return True
    message = ("CPMAE needs these Python packages, which are not installed yet:\n  "
               + "\n  ".join(missing)
               + "\n\nDownload and install them now? (torch is large; this can take several minutes)")
    if not askConsent(message):
        return False
    if TORCH_REQUIREMENT in missing:
        _installTorch()
        missing.remove(TORCH_REQUIREMENT)
    if missing:
        _pipInstall(missing)
    still = missingPackages()
    if still:
        from cpmae.errors import CPMAEError

        raise CPMAEError("installation finished but these packages are still missing: " + ", ".join(still))
    return True


def _installTorch() -> None:
    try:
        import PyTorchUtils  # the PyTorch extension, a dependency of this extension
    except ImportError:
        _pipInstall([TORCH_REQUIREMENT])
        return
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])


def _pipInstall(requirements: List[str]) -> None:
    import slicer

    try:
        import slicer.pydeps as pydeps
        from packaging.requirements import Requirement

        # skip_packages: deepbet & co. must not pull a second torch or replace Slicer's SimpleITK
        pydeps.pip_ensure([Requirement(r) for r in requirements], skip_packages=["SimpleITK", "torch"],
                          requester="CPMAEDeidentify")
    except (ImportError, AttributeError):
        slicer.util.pip_install(" ".join(requirements))
