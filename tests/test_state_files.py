"""Tune's saved state in an experiment folder: copied in whole or not at all, and checked before a resume."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.state_files import PART, unreadable_state, upload_whole_files, whole

# A child that, like Tune's driver, rewrites its staging folder and copies it into the experiment folder
# over and over, until it is killed. The snapshot is a few MB, so a copy takes long enough to be killed in.
COPIER = """\
import json, os, pickle, sys
from search.state_files import upload_whole_files
staging, folder, how = sys.argv[1:]
seen, n = {}, 0
while True:
    n += 1
    snapshot = {"trial_data": ["x" * 60] * 50000, "runner_data": {"n": n}, "stats": {"start_time": n}}
    for name, data in (("experiment_state-1.json", json.dumps(snapshot)),
                       ("search_gen_state-1.json", pickle.dumps({"counter": n, "pad": b"y" * 500000}))):
        mode = "wb" if isinstance(data, bytes) else "w"
        with open(os.path.join(staging, name + ".tmp"), mode) as f:
            f.write(data)
        os.replace(os.path.join(staging, name + ".tmp"), os.path.join(staging, name))
    if how == "whole":
        upload_whole_files(staging, folder, seen)
    else:  # Tune's own upload, for comparison: python tests/test_state_files.py
        import pyarrow.fs
        pyarrow.fs.copy_files(staging, folder)
    print(n, flush=True)
"""


SNAPSHOT = json.dumps({"trial_data": [], "runner_data": {}, "stats": {"start_time": 1796114322.3282166}})


def test_a_copy_puts_whole_files_in_place_and_skips_what_has_not_changed(tmp_path):
    staging, folder = tmp_path / "staging", tmp_path / "experiment"
    (staging / "trial_1").mkdir(parents=True)
    (staging / "experiment_state-1.json").write_text(SNAPSHOT)
    (staging / "trial_1" / "result.json").write_text('{"epoch": 1}\n')
    seen: dict = {}
    upload_whole_files(str(staging), str(folder), seen)
    assert (folder / "trial_1" / "result.json").read_text() == '{"epoch": 1}\n'
    assert (folder / "experiment_state-1.json").read_text() == SNAPSHOT
    assert not list(folder.rglob(f"*{PART}"))

    (folder / "trial_1" / "result.json").write_text("changed here\n")  # not changed in staging: not copied again
    (staging / "experiment_state-1.json").write_text(SNAPSHOT[:-30])  # Tune rewriting it as it is read
    upload_whole_files(str(staging), str(folder), seen)
    assert (folder / "trial_1" / "result.json").read_text() == "changed here\n"
    assert (folder / "experiment_state-1.json").read_text() == SNAPSHOT  # the whole one stays
    assert not list(folder.rglob(f"*{PART}"))
    (folder / "trial_1" / "result.json").unlink()  # a file gone from the folder is copied again
    upload_whole_files(str(staging), str(folder), seen)
    assert (folder / "trial_1" / "result.json").read_text() == '{"epoch": 1}\n'


def test_unreadable_state_names_the_newest_files_a_resume_would_read_and_cannot(tmp_path):
    import pickle

    (tmp_path / "experiment_state-2026-01-01_00-00-01.json").write_text(SNAPSHOT)
    (tmp_path / "experiment_state-2026-01-01_00-00-02.json").write_text('{"trial_data": [')
    (tmp_path / "search_gen_state-2026-01-01_00-00-01.json").write_bytes(pickle.dumps({"counter": 3}))
    (tmp_path / "searcher-state-2026-01-01_00-00-02.pkl").write_bytes(b"")
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"x": 1})[:-3])
    (tmp_path / "space.yaml").write_text("")  # not Tune's
    assert sorted(unreadable_state(tmp_path)) == ["experiment_state-2026-01-01_00-00-02.json",
                                                  "searcher-state-2026-01-01_00-00-02.pkl", "tuner.pkl"]
    assert whole(tmp_path / "search_gen_state-2026-01-01_00-00-01.json", "search_gen_state-2026-01-01_00-00-01.json")
    # Tune's snapshot is told whole by its last key, not parsed (90 MB at 3,000 trials); cut short it is not
    snapshot = json.dumps({"trial_data": [[json.dumps({"stats": {"start_time": 1}}), "{}"]] * 3,
                           "runner_data": {"_x": {"y": {}}}, "stats": {"start_time": 1796114322.3282166}})
    name = "experiment_state-2026-01-01_00-00-03.json"
    for text, expected in [(snapshot, True), (snapshot[:-1], False), (snapshot[:snapshot.index(', "stats"')], False),
                           (snapshot[:snapshot.index(', "runner_data"') - 1], False)]:
        (tmp_path / name).write_text(text)
        assert whole(tmp_path / name, name) is expected, text[-40:]


def kill_while_copying(tmp_path: Path, how: str, kills: int, seed: int = 0) -> list[str]:
    """SIGKILL a copier ``kills`` times at random moments; the state files it left unreadable."""
    rng, broken = random.Random(seed), []
    staging, folder = tmp_path / "staging", tmp_path / "experiment"
    staging.mkdir()
    folder.mkdir()
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", COPIER, str(staging), str(folder), how],
                                 stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
        assert child.stdout.readline(), "the copier failed"  # one copy done: the folder holds whole files
        time.sleep(rng.uniform(0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert {"experiment_state-1.json", "search_gen_state-1.json"} <= {p.name for p in folder.iterdir()}
        broken += unreadable_state(folder)
    return broken


def test_a_driver_killed_while_copying_leaves_every_state_file_whole(tmp_path):
    """Tune's copy (pyarrow's ``copy_files``: truncate, then write) killed part-way left the snapshot and the
    searcher's state empty or cut short, and the next resume started the experiment afresh."""
    assert kill_while_copying(tmp_path, "whole", kills=12) == []


if __name__ == "__main__":  # how often Tune's own copy, killed the same way, leaves files unreadable
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        print("pyarrow copy_files, 12 kills:", kill_while_copying(Path(scratch), "pyarrow", kills=12))


TINY = """\
family: mlp
dataset: synthetic
metric: val_loss
mode: min
max_epochs: 1
grid:
  - {hidden: [4]}
  - {hidden: [8]}
params:
  lr: 0.01
"""


@pytest.mark.ray
def test_a_resume_refuses_a_saved_state_it_cannot_read(ray_session, write_space, tmp_path):
    """Tune, given an empty searcher state, logged "Failed to restore the run state", started afresh with
    nothing to run, and `valley resume` said the search had completed."""
    from analysis import format as fmt
    from search.resume import resume
    from search.run import SearchError, SearchOptions, run_search
    from spaces import load_space

    folder = run_search(load_space(write_space(TINY)), SearchOptions(storage=str(tmp_path), name="tiny", quiet=True))
    from ray.train._internal.storage import _FilesystemSyncer

    assert getattr(_FilesystemSyncer._sync_up_command, "_valley", False)  # the search copied through valley's
    assert unreadable_state(folder) == [] and not list(folder.rglob(f"*{PART}"))
    newest = max(folder.glob("basic-variant-state-*.json"))  # the grid's place
    newest.write_bytes(b"")
    fmt.update_status(folder, fmt.INTERRUPTED)  # as a killed driver leaves it (a completed one has nothing to resume)
    (folder / f".experiment_state-x.json.0123abcd{PART}").write_text("{")  # a copy a killed driver left unfinished
    with pytest.raises(SearchError, match=rf"{folder}: Tune's saved state cannot be read \({newest.name}: empty or "
                                          r"cut short, .*; run the rest as a new search with `valley search`"):
        resume(folder)
    assert not list(folder.glob(f".*{PART}"))


@pytest.mark.ray
def test_a_local_search_leaves_ray_s_logs_in_its_temp_folder_not_tune_s_staging_copies(write_space):
    """Every search left Tune's staging copies of its state in /tmp/ray (118 MB of one session's 136 here)."""
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    try:
        done = subprocess.run([sys.executable, "-m", "search.cli", "search", str(write_space(TINY)), "--storage",
                               str(scratch / "results"), "--name", "tiny", "--num-cpus", "2", "--quiet"],
                              env={**os.environ, "RAY_TMPDIR": str(scratch)}, cwd=Path(__file__).parent.parent,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        sessions = list((scratch / "ray").glob("session_2*"))
        assert len(sessions) == 1 and (sessions[0] / "logs").is_dir() and not (sessions[0] / "artifacts").exists()
        assert (scratch / "results" / "tiny" / "trials.csv").read_text().count("\n") == 3  # header and 2 trials
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
