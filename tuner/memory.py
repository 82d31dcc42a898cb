"""Peak memory of the training window (not of the whole process).

Linux lets a process reset its resident-set high-water mark (`echo 5 > /proc/self/clear_refs`),
so `VmHWM` read after training is the peak of the training window alone. Elsewhere a
sampling thread stands in. On CUDA the allocator's peak is used.
"""

from __future__ import annotations

import threading
from pathlib import Path


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """`with PeakMemory() as pm: ...; pm.peak_mb` = peak resident memory (MB) inside the block."""

    def __init__(self, device: str = "cpu", interval: float = 0.05) -> None:
        self.device = device
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm_reset = False
        self._sampled = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._hwm_reset = _status_kb("VmHWM") is not None
        except OSError:
            self._hwm_reset = False
        if not self._hwm_reset:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sampled = max(self._sampled, _status_kb("VmRSS") or 0)

    def current_mb(self) -> float:
        """Peak so far (MB)."""
        if self.device.startswith("cuda"):
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        if self._hwm_reset:
            return (_status_kb("VmHWM") or 0) / 1024
        return max(self._sampled, _status_kb("VmRSS") or 0) / 1024

    def __exit__(self, *exc) -> None:
        self.peak_mb = self.current_mb()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
