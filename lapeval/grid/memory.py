"""This process's memory, for the per-model figures of a multi-model grid: resident set size and its peak
from ``/proc/self/status`` (VmRSS, VmHWM; ``ru_maxrss`` where there is no /proc), CUDA's peak reset too."""

from __future__ import annotations


def _proc_status(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def memory_reset() -> float:
    """Reset the resident-memory peak (Linux ``clear_refs``; CUDA's peak too) and return the current MB."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # noqa: BLE001 - memory figures are informative only
        pass
    return memory_now()


def memory_now() -> float:
    return _proc_status("VmRSS") or 0.0


def memory_peak() -> float:
    """The resident peak (MB) since :func:`memory_reset`, ``ru_maxrss`` where /proc has none."""
    peak = _proc_status("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return peak


def empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
