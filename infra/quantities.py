"""Kubernetes CPU and memory quantities (`250m`, `1.5`; `256Mi`, `1Gi`): their shape and value.

Shared by the settings checks and the capacity checks and plan; imports nothing of Liftoff.
"""

from __future__ import annotations

CPU_RE = r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$"
MEMORY_RE = r"^[0-9]+(Ki|Mi|Gi|Ti)$"

_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def cpu_cores(quantity: str) -> float:
    """Cores of a CPU quantity matching CPU_RE (`250m` -> 0.25)."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_bytes(quantity: str) -> int:
    """Bytes of a memory quantity matching MEMORY_RE (`1Ki` -> 1024)."""
    return int(quantity[:-2]) * _MEMORY_UNITS[quantity[-2:]]
