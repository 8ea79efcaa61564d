"""What every benchmark script shares: the repository on ``sys.path``, the machine, a table."""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts only benchmarks/ on the path
    sys.path.insert(0, str(ROOT))


def machine() -> str:
    """One line naming the machine a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    line = f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"
    try:
        import torch

        line += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            line += f", {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    return line


def table(rows: Sequence[dict[str, object]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table: floats to 3 significant digits, so it pastes into README.md as printed."""
    columns = list(columns or (rows[0].keys() if rows else []))

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if value != value else f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return "-" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def busy_cores(seconds: float = 1.0) -> float:
    """Cores kept busy by every process on the machine over ``seconds`` (Linux; NaN elsewhere)."""
    import time

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except OSError:
        return float("nan")
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait_s``) until other processes use under ``threshold`` cores; returns that use.

    The 2-core machine these figures come from is shared: another job's test suite running beside
    a benchmark doubles its wall time. Each row records the background load it started under.
    """
    import time

    deadline = time.monotonic() + max_wait_s
    load = busy_cores()
    while load > threshold and time.monotonic() < deadline:
        time.sleep(2.0)
        load = busy_cores()
    return load


class CpuMeter:
    """Wall time, CPU seconds of this process and all its descendants, and other jobs' cores, over a block.

    Descendants include Ray's daemons and workers when this process started Ray. Processes are
    sampled every ``interval`` seconds; one that exits between samples loses at most that much CPU,
    so ``mine_s`` is a lower bound. ``others_cores`` (machine busy time minus ours, per second) says
    how much a run was disturbed on a shared machine. Linux only; NaN elsewhere.
    """

    def __init__(self, interval: float = 0.5) -> None:
        import threading

        self.interval = interval
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.seen: dict[tuple[int, int], tuple[int, int]] = {}  # (pid, start) -> (first ticks, last ticks)
        self.names: dict[tuple[int, int], str] = {}  # (pid, start) -> what the process is
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.wall = self.mine_s = self.others_cores = float("nan")

    def _tree(self) -> dict[tuple[int, int], int]:
        """(pid, start time) -> utime + stime ticks, for this process and its descendants."""
        stats: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, start, ticks)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields[0] is state (field 3): ppid is field 4, utime 14, stime 15, starttime 22
            stats[int(entry)] = (int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = {}, [os.getpid()]
        while todo:
            pid = todo.pop()
            if pid in stats:
                tree[(pid, stats[pid][1])] = stats[pid][2]
            todo += children.get(pid, [])
        return tree

    def _sample(self, first: bool = False) -> None:
        for key, ticks in self._tree().items():
            start = self.seen.get(key, (ticks if first else 0, 0))[0]  # a process born inside starts at 0
            self.seen[key] = (start, ticks)
            if self.names.get(key, "ray::IDLE") in ("ray worker (starting)", "ray::IDLE"):  # Ray renames it later
                self.names[key] = process_kind(key[0])

    def by_kind(self) -> dict[str, float]:
        """CPU seconds per kind of process (driver, raylet, trial worker, ...), largest first."""
        totals: dict[str, float] = {}
        for key, (first, last) in self.seen.items():
            kind = self.names.get(key, "?")
            totals[kind] = totals.get(kind, 0.0) + (last - first) / self.tick
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def _machine_busy(self) -> int:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:8]]
        return sum(fields) - fields[3] - fields[4]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuMeter:
        import time

        try:
            self._busy0 = self._machine_busy()
            self._sample(first=True)
            self._thread.start()
        except OSError:
            self._busy0 = None
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import time

        self.wall = time.perf_counter() - self._started
        if self._busy0 is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        mine = sum(last - first for first, last in self.seen.values())
        self.mine_s = mine / self.tick
        others = (self._machine_busy() - self._busy0 - mine) / self.tick
        self.others_cores = max(0.0, others / self.wall)


_KINDS = (("default_worker.py", "ray worker (starting)"), ("/raylet/raylet", "raylet"), ("gcs_server", "gcs_server"), ("dashboard/agent.py", "dashboard agent"),
          ("runtime_env/agent", "runtime env agent"), ("log_monitor", "log monitor"),
          ("autoscaler/_private/monitor", "autoscaler monitor"), ("dashboard/dashboard.py", "dashboard"),
          ("multiprocessing.spawn", "pool worker"),
          ("resource_tracker", "multiprocessing resource tracker"))


def process_kind(pid: int) -> str:
    """A short name for what process ``pid`` is: ``driver`` for this one, Ray's role names for Ray's."""
    if pid == os.getpid():
        return "driver (this process)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    if cmdline.startswith("ray::"):
        return cmdline.split()[0]  # ray::ImplicitFunc.train, ray::IDLE, ...
    for needle, kind in _KINDS:
        if needle in cmdline:
            return kind
    return cmdline.split()[0].rsplit("/", 1)[-1] if cmdline else "?"
