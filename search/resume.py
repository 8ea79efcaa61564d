"""Continue an interrupted experiment: finished trials stay, unfinished ones resume from checkpoints."""
from __future__ import annotations

from pathlib import Path

from search.run import (SearchError, SearchOptions, check_cluster, fit_and_finish, load_data, start_ray,
                        update_status)


def resume(folder: Path, retry_failed: bool = False) -> Path:
    """Restore the Tune experiment in ``folder`` and run it to the end.

    Trials that finished (completed, stopped by ASHA, failed or diverged) are kept as they are;
    unfinished ones continue from their last checkpoint, and the searcher (Optuna's study, Tune's
    grid) from its saved state. ``retry_failed`` also re-runs failed trials from their checkpoints.
    """
    from analysis.load import read_manifest

    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise SearchError(f"{folder} is not a folder; give an experiment folder that `valley search` made, "
                          "e.g. results/mlp-rough-digits-20261127-101500")
    manifest = read_manifest(folder)
    if not manifest:
        raise SearchError(f"{folder} is not a valley experiment (no valley.json); give a folder that "
                          "`valley search` made")
    from ray import tune

    if not tune.Tuner.can_restore(str(folder)):
        raise SearchError(f"{folder} has no Tune state to resume (it stopped before the first trial); "
                          "start it again with `valley search`")
    options = {k: v for k, v in manifest["options"].items() if k in SearchOptions.__dataclass_fields__}
    options["warm_points"] = tuple(options.get("warm_points") or ())
    options["warm_rewards"] = tuple(options.get("warm_rewards") or ())
    opts = SearchOptions(**options)
    from trainables.loop import train

    data = load_data(manifest["dataset"], opts.data_dir)
    if data.fingerprint != manifest["data_fingerprint"]:
        raise SearchError(f"the data set {manifest['dataset']!r} differs from the one this experiment started "
                          f"with (fingerprint {data.fingerprint} != {manifest['data_fingerprint']}); "
                          "restore the original files or start a new search")
    say = (lambda *a: None) if opts.quiet else (lambda *a: print(*a, flush=True))
    say(f"valley: resuming {folder}")
    start_ray(opts)
    check_cluster(opts, folder.parent)
    trainable = tune.with_resources(
        tune.with_parameters(train, data=data, variants=manifest["grid"]),
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    tuner = tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=retry_failed)
    update_status(folder, "running")
    return fit_and_finish(tuner, folder, say)
