"""One reading of ``--device``, resolved once and passed on unchanged.

The pipeline, deepbet and training all run on the device this function returns: an explicit
``cuda:1`` stays ``cuda:1`` for the brain mask and the model alike (resolving it twice, each
module its own way, once sent deepbet to GPU 0 and the model to GPU 1), and a device this
machine does not have is refused here, in one line, before any work starts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

from cpmae.errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N"
DeviceSpec = Union[str, "torch.device", None]


def resolve_device(spec: DeviceSpec = "auto") -> "torch.device":
    """The torch device for ``spec``; ``InputError`` when this machine cannot provide it.

    ``auto``/None: ``cuda`` when CUDA is available, else ``cpu``. ``cuda`` means torch's current
    CUDA device; ``cuda:N`` must be one of this machine's GPUs. ``mps`` where PyTorch has it.
    (torch is imported here, not at the top: the CLI reads ``DEVICE_HELP`` without paying for it.)
    """
    import torch

    if isinstance(spec, torch.device):
        dev = spec
    else:
        text = "auto" if spec is None else str(spec).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise InputError(f"--device {spec} is not a device: use {DEVICE_HELP}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {dev} was asked for but this machine has no CUDA GPU (use --device cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(f"--device {dev} was asked for but this machine has {count} CUDA GPU(s): "
                             f"cuda:0 to cuda:{count - 1}")
        return dev
    if dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError("--device mps was asked for but this machine has no Apple GPU (use --device cpu)")
        return dev
    raise InputError(f"--device {spec} is not supported: use {DEVICE_HELP}")
