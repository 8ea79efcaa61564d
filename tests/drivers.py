"""Drivers in their own process and session, as a user starts them: each with its own local Ray."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def driver(*args: str, **popen) -> subprocess.Popen:
    """``python *args`` in a new session (so its Ray can be found and killed with it), never joining
    the test session's Ray; stdout and stderr together, as text."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, *args], env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **{"cwd": ROOT, **popen})


def valley(*args: str, **popen) -> subprocess.Popen:
    """The ``valley`` command line in a driver of its own."""
    return driver("-m", "search.cli", *args, **popen)


def session_entries(sid: int) -> list[Path]:
    """The ``/proc`` entries of the live processes in a driver's session, Ray's included (a zombie, a
    killed worker that its reparenting init has not reaped yet, is not live)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(entry)
            except OSError:
                continue
    return found


def session_processes(sid: int) -> list[str]:
    """``"pid name"`` of the live processes in a driver's session."""
    found = []
    for entry in session_entries(sid):
        try:
            found.append(f"{entry.name} {(entry / 'comm').read_text().strip()}")
        except OSError:
            continue
    return found


def wait_gone(sid: int, timeout: float = 30) -> list[str]:
    """Wait until nothing of a driver's session is left; what is left at ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left
