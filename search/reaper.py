"""Ends the local Ray of a driver when the driver dies: ``python reaper.py DRIVER_PID PID ...``.

When a driver dies (even by SIGKILL), Ray's raylet, GCS and workers follow within seconds,
but its dashboard and runtime-env agents wait a minute on a dead GCS. This script, started
beside the driver by ``search.ray_start``, kills the processes the driver started once the
driver is gone, each checked by its start time so a recycled process id is never hit. It is
run as a file, without importing valley, so it starts in milliseconds.
"""
import os
import signal
import sys
import time


def started(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def main(driver: int, pids: list[int]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C and `timeout` are the driver's: it stops Ray itself
        signal.signal(sig, signal.SIG_IGN)
    starts = {pid: started(pid) for pid in pids}
    while os.getppid() == driver:
        time.sleep(0.5)
    time.sleep(0.5)
    for pid, start in starts.items():
        if start is not None and started(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    main(int(sys.argv[1]), [int(p) for p in sys.argv[2:]])
