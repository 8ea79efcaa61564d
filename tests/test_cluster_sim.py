"""A TPE + ASHA search on a simulated multi-node cluster, one of whose worker nodes disappears mid-search.

``ray.cluster_utils.Cluster`` runs a 0-CPU head and 1-CPU worker nodes as separate raylets on
this machine. It needs its own Ray (not the session's) and must add and remove nodes from the
main thread, so the whole scenario runs in a child process (this file run as a script) with its
own ``RAY_TMPDIR``: the cluster's address file never reaches another Ray on the machine.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EPOCHS, TRIALS = 20, 6
SPACE = f"""\
family: mlp
dataset: synthetic
metric: val_loss
mode: min
max_epochs: {EPOCHS}
grid:
  - {{hidden: [16]}}
  - {{hidden: [24]}}
  - {{hidden: [32]}}
  - {{hidden: [48]}}
params:
  lr: 0.003
  batch_size: 16
  checkpoint_s: 0  # a checkpoint every epoch
"""


@pytest.mark.ray
def test_lost_worker_node_trials_resume_elsewhere(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="vc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT))
    try:
        run = subprocess.run([sys.executable, __file__, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=240)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])

    # asking more than any node has is refused after Ray starts, before any trial
    assert "--gpus-per-trial 0.5 asks for more GPUs than any node of the cluster" in summary["refused"][0]
    assert "--cpus-per-trial 2 asks for more CPUs than any node of the cluster" in summary["refused"][1]
    assert summary["status"] == "completed"
    assert len(summary["trials"]) == TRIALS and set(summary["statuses"]) <= {"completed", "stopped"}
    # Optuna's study holds each trial once, finished, with the value it last reported
    assert sorted(trial for trial, _, _ in summary["study"]) == summary["trials"]
    assert {trial: value for trial, state, value in summary["study"] if state == "COMPLETE"} == pytest.approx(
        summary["last_val_loss"])
    assert summary["removed"], f"no trial was seen running on a worker node: {summary}"
    assert len(summary["trial_nodes"]) >= 2, summary  # trials ran on more than one node
    moved = summary["moved"]  # trial -> the epochs it reported on the removed node, then elsewhere
    assert moved, f"no trial was running on the removed node: {summary}"
    for trial, (before, after) in moved.items():
        assert after[0] > 1 and after[0] <= before[-1] + 1  # from its checkpoint, not from scratch
        assert after == list(range(after[0], summary["epochs"][trial] + 1))  # then on to where it ended


def scenario(tmp: Path) -> dict:
    """Run the search on a 3-node cluster, remove a worker node that holds a running trial."""
    from ray.cluster_utils import Cluster

    from search.progress import Progress
    from search.run import SearchError, SearchOptions, run_search
    from spaces import load_space

    (tmp / "space.yaml").write_text(SPACE)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    folder = tmp / "results" / "cluster"
    opts = SearchOptions(address=cluster.address, storage=str(tmp / "results"), name="cluster", max_failures=3,
                         quiet=True, search="optuna", samples=TRIALS, scheduler="asha")
    refused = []
    for too_much in ({"gpus_per_trial": 0.5}, {"cpus_per_trial": 2}):
        try:
            run_search(load_space(tmp / "space.yaml"), dataclasses.replace(opts, **too_much))
        except SearchError as err:
            refused.append(str(err))
    assert not folder.exists()
    live: dict[str, tuple[int, str]] = {}  # trial -> (epoch, node id) of its latest result, as the driver sees it
    seen_by_progress = Progress.on_trial_result

    def on_trial_result(self, iteration, trials, trial, result, **info):
        live[trial.trial_id] = (result.get("epoch", 0), result.get("node_id", ""))
        return seen_by_progress(self, iteration, trials, trial, result, **info)

    Progress.on_trial_result = on_trial_result  # result.json reaches the folder only every few seconds
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(folder=run_search(load_space(tmp / "space.yaml"),
                                                                              opts)))
    thread.start()

    def rows() -> dict[str, list[dict]]:
        """Every line of every trial's result.json, in order (a resumed trial may repeat an epoch)."""
        found = {}
        for path in folder.glob("*/result.json"):
            lines = path.read_text().splitlines()
            found[path.parent.name] = [json.loads(line) for line in lines if line.endswith("}")]
        return found

    removed = None
    deadline = time.monotonic() + 150
    while removed is None and thread.is_alive() and time.monotonic() < deadline:
        for epoch, node_id in list(live.values()):
            node = next((w for w in workers if w.node_id == node_id), None)
            if node is not None and 2 <= epoch <= EPOCHS - 5:
                cluster.remove_node(node)  # its raylet and workers die; the trial's actor with them
                removed = node.node_id
                cluster.add_node(num_cpus=1)  # a replacement, as an autoscaler would bring
                break
        time.sleep(0.02)
    thread.join(timeout=180)
    results = rows()
    moved = {}
    for trial, trial_rows in results.items():
        nodes = [row["node_id"] for row in trial_rows]
        if removed in nodes and nodes[-1] != removed:
            moved[trial] = ([row["epoch"] for row in trial_rows if row["node_id"] == removed],
                            [row["epoch"] for row in trial_rows if row["node_id"] != removed])
    import pandas as pd

    from search.optuna_study import load_study

    trials = pd.read_csv(folder / "trials.csv")
    epochs = pd.read_parquet(folder / "epochs.parquet").sort_values("epoch")
    summary = {
        "trials": sorted(trials["trial_id"]),
        "last_val_loss": epochs.groupby("trial_id").tail(1).set_index("trial_id")["val_loss"].to_dict(),
        "epochs": trials.set_index("trial_id")["epochs"].to_dict(),
        "study": [[t.user_attrs.get("ray_trial_id"), t.state.name, t.value] for t in load_study(folder).trials],
        "status": json.loads((folder / "valley.json").read_text())["status"],
        "statuses": sorted(trials["status"]),
        "trial_nodes": sorted({row["node_id"] for r in results.values() for row in r}),
        "removed": removed,
        "refused": refused,
        "moved": moved,
    }
    import ray

    ray.shutdown()  # the driver first: Cluster refuses to remove the node a driver is connected to
    cluster.shutdown()
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(scenario(Path(sys.argv[1]))), flush=True)
