"""``--log mlflow``: Ray Tune's MLflow callback, one MLflow run per trial (imports MLflow)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from analysis.format import MANIFEST, PLAN_STATE
from search.loggers import resolved


def experiment_name(folder: Path) -> str:
    """The MLflow experiment of a valley experiment: its folder's name, or ``<plan>/<stage>`` for a plan's
    stage (its folder is named after the stage, so every plan's "rough" would share one experiment)."""
    return f"{folder.parent.name}/{folder.name}" if (folder.parent / PLAN_STATE).exists() else folder.name


class MLflow(MLflowLoggerCallback):
    """Ray's MLflow logger: one run per trial, tagged with its trial id, its parameters resolved,
    its metrics per epoch (the last epoch's report carries the best checkpoint's test metrics),
    and the experiment's manifest as an artifact when the trial ends.

    A resumed trial goes on in the run it started, and an epoch it reports again (one after its
    last checkpoint) is not logged twice: MLflow cannot replace a logged value, so the first stays.
    """

    def __init__(self, uri: str | None, folder: Path, rows: list[dict[str, Any]]) -> None:
        super().__init__(uri, experiment_name=experiment_name(folder), tags={"valley_experiment": str(folder)})
        self.folder = folder
        self.rows = rows
        self.logged: dict[str, int] = {}  # run id -> the last step logged

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self.artifacts_beside_the_results()
        super().setup(*args, **kwargs)
        self.end_set_aside()

    def artifacts_beside_the_results(self) -> None:
        """A database store (``sqlite:///...``, from --mlflow-uri, MLFLOW_TRACKING_URI or MLflow's default) keeps
        no files: MLflow put a new experiment's artifacts under ``./mlruns`` of whatever folder the command ran
        in. They go into the experiment's own folder (``mlflow-artifacts``), created so before Ray's callback
        finds the experiment."""
        import mlflow
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri or mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, else MLflow's own mlflow.db
        if not uri or "://" not in uri or uri.split(":", 1)[0] in ("file", "http", "https", "databricks"):
            return  # a file store keeps its artifacts itself; a server has its own artifact root
        client, name = MlflowClient(uri), experiment_name(self.folder)
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=(self.folder / "mlflow-artifacts").resolve().as_uri())

    def end_set_aside(self) -> None:
        """End, as KILLED, the runs of trials ``valley resume`` set aside (begun after the last snapshot a
        killed driver wrote, so no Tune trial goes on in them): they stayed RUNNING for ever. A trial
        Tune draws again with the same id (a grid's) reopens its run and ends it as usual."""
        from search.progress import UNRESTORED

        gone = sorted(p.name for p in (self.folder / UNRESTORED).glob("*") if p.is_dir())
        if not gone:
            return
        client = self.mlflow_util._get_client()
        for trial_id in gone:
            for run in client.search_runs([self.mlflow_util.experiment_id],
                                          filter_string=f"tags.trial_id = '{trial_id}' and attributes.status = "
                                                        "'RUNNING'"):
                client.set_terminated(run.info.run_id, status="KILLED")

    def log_trial_start(self, trial: Any) -> None:
        if trial not in self._trial_runs:
            client = self.mlflow_util._get_client()
            found = client.search_runs([self.mlflow_util.experiment_id],
                                       filter_string=f"tags.trial_id = '{trial.trial_id}'", max_results=1)
            if found:
                run_id = self._trial_runs[trial] = found[0].info.run_id
                self.logged[run_id] = max((m.step for m in client.get_metric_history(run_id, "epoch")), default=0)
                return
            run = client.create_run(self.mlflow_util.experiment_id, run_name=str(trial),
                                    tags={**self.tags, "trial_id": trial.trial_id, "trial_name": str(trial)})
            self._trial_runs[trial] = run.info.run_id
            self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=resolved(trial.config, self.rows))

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        run_id, step = self._trial_runs[trial], int(result["training_iteration"])
        if step <= self.logged.get(run_id, 0):
            return
        self.logged[run_id] = step
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "training_iteration"]
        self.mlflow_util._get_client().log_batch(run_id, metrics=metrics)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if (self.folder / MANIFEST).exists():
            self.mlflow_util._get_client().log_artifact(self._trial_runs[trial], str(self.folder / MANIFEST))
        super().log_trial_end(trial, failed)
