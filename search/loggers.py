"""Where a search's results go: Tune's JSON files, TensorBoard event files and MLflow runs.

Both are Ray Tune's own logger callbacks, run on the driver. valley changes what they record
of a configuration (a grid row's keys, not its index) and of a finished trial (its final and
test metrics), and how a resumed trial's repeated epochs are recorded. MLflow's callback is in
``search/mlflow_log.py``: importing it imports MLflow (a second), so only ``--log mlflow`` does.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ray import cloudpickle
from ray.tune.logger import JsonLoggerCallback
from ray.air.constants import EXPR_PARAM_FILE, EXPR_PARAM_PICKLE_FILE, EXPR_RESULT_FILE
from ray.tune.utils.util import SafeFallbackEncoder
from ray.tune.logger.tensorboardx import TBXLoggerCallback

from analysis.format import at_best_checkpoint, row_at_epoch
from search.options import MLFLOW_INSTALL, SearchError, SearchOptions


def resolved(config: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A trial's configuration with its grid row's keys in place of the row's index (as the trainable
    resolves it); lists as text."""
    from trainables.config import resolve_variant

    return {k: str(v) if isinstance(v, (list, tuple, dict)) else v
            for k, v in resolve_variant(config, rows).items() if v is not None}


def tensorboardx_without_torch() -> None:
    """Import tensorboardX with torch hidden from it. Its writer imports torch (1.5 s and 300 MB of a
    search's start) only to accept torch tensors, and the driver logs floats; the trials have torch.
    Where the driver has torch already, nothing changes."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError, which tensorboardX catches
    try:
        import tensorboardX  # noqa: F401
    finally:
        del sys.modules["torch"]


class TensorBoard(TBXLoggerCallback):
    """Ray's TensorBoard logger: a curve per reported number and trial (``ray/tune/val_loss``), and
    in the HParams tab each trial's whole configuration against its final metrics, with each validation
    metric also at the best checkpoint (``best_val_acc``), as trials.csv ranks it.

    A trial's writer opens at its first result, with TensorBoard's ``purge_step`` set to that
    result's step: epochs a resumed trial reports again (those after its last checkpoint, or after
    the snapshot a killed driver left) replace the earlier ones instead of doubling the curve. The
    event files are written straight into the experiment folder, as ``Json`` writes its files.
    """

    def __init__(self, rows: list[dict[str, Any]], metrics: set[str]) -> None:
        tensorboardx_without_torch()
        super().__init__()
        self.rows = rows
        # the validation metrics at the best checkpoint (best_val_acc, best_val_csd: what trials.csv ranks on),
        # beside their last epoch's; the trainable reports only best_val_loss itself
        self.at_best = sorted(m for m in metrics if m.startswith("val_") and f"best_{m}" not in metrics)
        self.metrics = {f"ray/tune/{m}" for m in (*metrics, *(f"best_{m}" for m in self.at_best))}
        self._best: dict[Any, dict[str, float]] = {}

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_writer:
            self._trial_writer.pop(trial).close()

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        if trial not in self._trial_writer:
            Path(trial.path).mkdir(parents=True, exist_ok=True)
            step = int(result["training_iteration"])
            # tensorboardX names its file by the second and opens it "wb": a trial paused and resumed within
            # a second (HyperBand) overwrote its own earlier epochs. The step keeps the names apart, in order.
            self._trial_writer[trial] = self._summary_writer_cls(
                trial.path, flush_secs=30, purge_step=step, filename_suffix=f".{step:06d}")
            self._trial_result[trial] = {}
            self._best[trial] = self.best_on_disk(Path(trial.path))  # a resumed trial's best may be older
        if at_best_checkpoint(result):
            self._best[trial] = {f"best_{m}": result[m] for m in self.at_best if m in result}
        super().log_trial_result(iteration, trial, {**result, **self._best[trial]})

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        super().log_trial_end(trial, failed)
        self._best.pop(trial, None)

    def best_on_disk(self, trial_dir: Path) -> dict[str, float]:
        """The ``best_val_*`` of a trial's results so far in ``result.json`` (none for a new trial)."""
        from analysis.load import read_results

        rows = read_results(trial_dir)
        best = row_at_epoch(rows, rows[-1].get("best_epoch") if rows else None) or {}
        return {f"best_{m}": best[m] for m in self.at_best if m in best}

    def _try_log_hparams(self, trial: Any, result: dict[str, Any]) -> None:
        from tensorboardX.summary import hparams

        final = {k: float(v) for k, v in result.items() if k in self.metrics}
        mine = resolved(trial.config, self.rows)
        # The HParams tab takes its columns from the first trial's experiment summary it reads: each names
        # every key of the space (every grid row's), not only its own, or `hidden` went missing beside `layers`
        every = {**{k: v for row in self.rows for k, v in resolved(row, []).items()}, **mine}
        experiment, = hparams(hparam_dict=every, metric_dict=final)[:1]
        writer = self._trial_writer[trial].file_writer
        for summary in (experiment, *hparams(hparam_dict=mine, metric_dict=final)[1:]):
            writer.add_summary(summary)


def check(opts: SearchOptions) -> None:
    """Refuse --log mlflow without MLflow, and an MLflow store that cannot be opened, in one line."""
    if "mlflow" not in opts.log:
        if opts.mlflow_uri:
            raise SearchError("--mlflow-uri goes with --log mlflow; add --log mlflow or drop --mlflow-uri")
        return
    if importlib.util.find_spec("mlflow") is None:
        raise SearchError(f"--log mlflow needs MLflow, which is not installed; install it with `{MLFLOW_INSTALL}`")
    from mlflow.tracking import MlflowClient

    if opts.quiet:  # MLflow's INFO lines as it makes a database's tables (its loggers are set up on import)
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        MlflowClient(opts.mlflow_uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - MLflow raises many kinds; each becomes one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = f"--mlflow-uri {opts.mlflow_uri or '(MLflow default)'}"
        if "MLFLOW_ALLOW_FILE_STORE" in first:  # cut at 300 characters, it read "...See htt; give a database URI"
            raise SearchError(f"{where}: MLflow refuses its file store (in maintenance mode) unless "
                              "MLFLOW_ALLOW_FILE_STORE=true is set; set it, or give a database URI such as "
                              "sqlite:///mlflow.db (`mlflow migrate-filestore` moves a file store's runs there)"
                              ) from None
        raise SearchError(f"{where}: MLflow cannot open it: {first[:300]}; give a database URI such as "
                          "sqlite:///mlflow.db or a tracking server's http:// address") from None


class Json(JsonLoggerCallback):
    """Tune's ``result.json`` and ``params.json``, written straight into the experiment folder.

    Tune writes them in a staging folder under /tmp/ray and copies that into the experiment folder
    with its snapshots, in the background; a driver killed mid-copy left a trial's last result lines
    behind while the snapshot that names its newer checkpoint had arrived (the resumed trial went
    on after them: ``tests/test_chaos.py``, BOHB). Written here, a line is on disk once the driver
    has it. A line past the snapshot a killed driver leaves is reported again on resume; every
    reader keeps one record per epoch.
    """

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_files:
            self._trial_files[trial].close()
        self.update_config(trial, trial.config)
        self._trial_files[trial] = (Path(trial.path) / EXPR_RESULT_FILE).open("at")

    def update_config(self, trial: Any, config: dict[str, Any]) -> None:
        self._trial_configs[trial] = config
        folder = Path(trial.path)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / EXPR_PARAM_FILE).open("w") as handle:
            json.dump(config, handle, indent=2, sort_keys=True, cls=SafeFallbackEncoder)
        with (folder / EXPR_PARAM_PICKLE_FILE).open("wb") as handle:
            cloudpickle.dump(config, handle)


def callbacks(opts: SearchOptions, folder: Path, rows: list[dict[str, Any]], metrics: set[str]) -> list[Any]:
    """Tune's logger callbacks for a search: JSON always (valley reads it), TensorBoard unless
    --no-tensorboard, MLflow with --log mlflow."""
    chosen: list[Any] = [Json()]
    if opts.tensorboard:
        chosen.append(TensorBoard(rows, metrics))
    if "mlflow" in opts.log:
        from search.mlflow_log import MLflow

        chosen.append(MLflow(opts.mlflow_uri, folder, rows))
    return chosen
