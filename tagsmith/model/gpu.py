"""Whether a GPU could be there, judged without importing torch (so small jobs can skip it)."""

from __future__ import annotations


def gpu_possible() -> bool:
    """Whether torch could find a GPU here, judged without importing torch: an NVIDIA or AMD
    (ROCm) driver, WSL's GPU bridge, or Apple's MPS. False means the CPU for certain."""
    import os
    import shutil
    import sys

    if sys.platform == "darwin":
        return True
    if sys.platform.startswith("linux"):
        return any(os.path.exists(p) for p in (
            "/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg",
        ))
    return shutil.which("nvidia-smi") is not None
