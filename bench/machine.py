"""What machine a benchmark ran on, printed with every result."""
from __future__ import annotations

import os
import platform


def describe() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["ram_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def banner() -> str:
    d = describe()
    return (f"machine: {d['cpu']}, {d['cores']} cores, {d.get('ram_gib')} GiB RAM, GPU {d.get('gpu')}, "
            f"torch {d.get('torch')} ({d.get('threads')} threads), {d['platform']}")
