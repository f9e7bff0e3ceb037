"""Read a process's CPU time, memory and open file descriptors from ``/proc``, and the machine.

Rules: Linux only (``/proc``); every reading is one file read, cheap enough to take during a
measurement. CPU time is user + system in seconds at clock-tick resolution (10 ms), so CPU
shares are only meaningful over windows of a second or more.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

__all__ = ["CpuWindow", "core_ticks", "cpu_seconds", "fd_count", "machine", "rss_bytes"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line; is {pid} a zombie?")


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def core_ticks() -> dict[str, tuple[int, int]]:
    """(busy, total) clock ticks of each core since boot, keyed ``core0``, ``core1``, ...

    Busy is everything but idle and iowait; steal (time the hypervisor gave away) counts
    as busy, since the benchmark could not use it either.
    """
    ticks = {}
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[:8])
            busy = user + nice + system + irq + softirq + steal
            ticks[f"core{name[3:]}"] = (busy, busy + idle + iowait)
    return ticks


@dataclass(slots=True)
class CpuWindow:
    """CPU share of several processes over a wall-clock window (1.0 = one core busy).

    ``share`` also holds ``core0``, ``core1``, ...: how busy each core was in the window
    with anything at all, so a reader can tell the benchmark's processes from other load on
    a shared machine. Mutable on purpose: ``start()`` then ``stop()`` around the measured code.
    """

    pids: Mapping[str, int]
    _cpu: dict[str, float] | None = None
    _cores: dict[str, tuple[int, int]] | None = None
    _wall: float = 0.0
    seconds: dict[str, float] | None = None
    share: dict[str, float] | None = None

    def start(self) -> None:
        self._cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._cores = core_ticks()
        self._wall = _wall()

    def stop(self) -> None:
        if self._cpu is None or self._cores is None:
            raise RuntimeError("CpuWindow.stop() before start(); call start() first")
        wall = max(_wall() - self._wall, 1e-9)
        self.seconds = {name: cpu_seconds(pid) - self._cpu[name] for name, pid in self.pids.items()}
        self.share = {name: round(used / wall, 3) for name, used in self.seconds.items()}
        for core, (busy, total) in core_ticks().items():
            busy_before, total_before = self._cores.get(core, (busy, total))
            self.share[core] = round((busy - busy_before) / max(total - total_before, 1), 3)


def _wall() -> float:
    return time.monotonic()


def machine() -> dict[str, str]:
    """CPU model, cores, OS, Python and the versions of the stack, for the report."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    described = {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }
    for package in ("bridge", "trio", "hypercorn", "quart-trio", "httpx2", "h11"):
        try:
            described[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            described[package] = "not installed"
    return described
