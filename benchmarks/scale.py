"""How a search's costs grow with its size: searches of 100, 1,000 and 3,000 trivial trials.

    python benchmarks/scale.py                       # 100, 1,000 and 3,000 trials (about 20 minutes on 2 cores)
    python benchmarks/scale.py --sizes 50 200        # a quick look

Each size is one ``search.run.run_search`` of N trials that do almost nothing (1 epoch of a
4-unit MLP on ``synthetic``, a grid over ``seed``; TensorBoard files on, as by default), on one
local Ray (2 CPUs) started before any timing. Per size it reports: the driver's CPU seconds per
trial (this process only: Tune's loop, callbacks, valley's progress), the driver's peak memory
(resident set, sampled every 0.1 s), the wall time per trial, the size on disk per trial, the
time to load the finished folder (``analysis.load.load``), to write its report (and the report's
size), and to serve its dashboard page (the experiment's page, cold, then from the cache).
Goals: per-trial driver CPU, wall time and disk flat from the smallest size to the largest (at
most 1.2 x); loading 3,000 trials under 2 s; their report under 30 s and 25 MB; the dashboard
page under 1 s.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, table  # noqa: E402
from search.manifest import git_commit  # noqa: E402


class PeakRss:
    """The highest resident set size of this process over a block, sampled every 0.1 s (MB)."""

    def __enter__(self) -> PeakRss:
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            self._stop.wait(0.1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def space(trials: int) -> str:
    return ("family: mlp\ndataset: synthetic\nmetric: val_loss\nmode: min\nmax_epochs: 1\n"
            "grid:\n  - {hidden: [4]}\nparams:\n  batch_size: 64\n"
            f"  seed: {{grid: {list(range(trials))}}}\n")


def measure(trials: int, root: Path) -> dict[str, float]:
    from analysis.dashboard import DashboardServer, report_page
    from analysis.load import load
    from analysis.report import write_report
    from search.run import SearchOptions, run_search
    from spaces import load_space

    (root / f"scale-{trials}.yaml").write_text(space(trials))
    opts = SearchOptions(storage=str(root / "results"), name=f"scale-{trials}", num_cpus=2, quiet=True)
    cpu, started = driver_cpu(), time.perf_counter()
    with PeakRss() as memory:
        folder = run_search(load_space(root / f"scale-{trials}.yaml"), opts)
    wall, cpu = time.perf_counter() - started, driver_cpu() - cpu
    row = {"trials": trials, "driver CPU s/trial": cpu / trials, "wall s/trial": wall / trials,
           "driver peak MB": memory.peak, "disk KB/trial": disk_bytes(folder) / trials / 1024}
    started = time.perf_counter()
    experiment = load(folder)
    row["load s"] = time.perf_counter() - started
    assert len(experiment.trials) == trials
    started = time.perf_counter()
    report = write_report(folder, images=False)
    row["report s"], row["report MB"] = time.perf_counter() - started, report.stat().st_size / 2**20
    server = DashboardServer(folder.parent, ("127.0.0.1", 0))
    try:
        for kind in ("dashboard page s (cold)", "(cached)"):
            started = time.perf_counter()
            report_page(server, folder)
            row[kind] = time.perf_counter() - started
    finally:
        server.server_close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000])
    args = parser.parse_args()
    os.environ.setdefault("VALLEY_OFFLINE", "1")
    import ray

    from search.options import SearchOptions
    from search.ray_start import start_ray

    commit, started = git_commit(), time.time()
    start_ray(SearchOptions(num_cpus=2))
    rows = []
    with tempfile.TemporaryDirectory(prefix="valley-scale-") as tmp:
        for trials in args.sizes:
            rows.append(measure(trials, Path(tmp)))
            print(rows[-1], file=sys.stderr, flush=True)
    ray.shutdown()
    first = rows[0]
    for row in rows:
        for key in ("driver CPU s/trial", "wall s/trial", "disk KB/trial"):
            row[f"{key.split()[0]} x"] = row[key] / first[key]
    print(f"`python benchmarks/scale.py {' '.join(sys.argv[1:])}`, {machine()}, {time.strftime('%Y-%m-%d')}, "
          f"commit {commit}, {time.time() - started:.0f} s")
    print(table(rows))
    print(f"x: per-trial cost against the {first['trials']}-trial search (goal: at most 1.2); goals at the "
          "largest size: load under 2 s, report under 30 s and 25 MB, dashboard page under 1 s")


if __name__ == "__main__":
    main()
