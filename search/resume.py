"""Continue an interrupted experiment: finished trials stay, unfinished ones resume from checkpoints."""
from __future__ import annotations

from pathlib import Path

from search.run import SearchError, SearchOptions, fit_and_finish, start_ray, update_status


def resume(folder: Path) -> Path:
    """Restore the Tune experiment in ``folder`` and run it to the end."""
    from analysis.load import read_manifest

    folder = folder.expanduser().resolve()
    manifest = read_manifest(folder)
    if not manifest:
        raise SearchError(f"{folder} is not a valley experiment (no valley.json); give a folder that "
                          "`valley search` made")
    from ray import tune

    if not tune.Tuner.can_restore(str(folder)):
        raise SearchError(f"{folder} has no Tune state to resume (it stopped before the first trial); "
                          "start it again with `valley search`")
    options = {k: v for k, v in manifest["options"].items() if k in SearchOptions.__dataclass_fields__}
    opts = SearchOptions(**options)
    from trainables.data import load_dataset
    from trainables.loop import train

    data = load_dataset(manifest["dataset"], data_dir=opts.data_dir)
    if data.fingerprint != manifest["data_fingerprint"]:
        raise SearchError(f"the data set {manifest['dataset']!r} differs from the one this experiment started "
                          f"with (fingerprint {data.fingerprint} != {manifest['data_fingerprint']}); "
                          "restore the original files or start a new search")
    print(f"valley: resuming {folder}", flush=True)
    start_ray(opts)
    trainable = tune.with_resources(
        tune.with_parameters(train, data=data, variants=manifest["grid"]),
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    tuner = tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=True)
    update_status(folder, "running")
    return fit_and_finish(tuner, folder, lambda *a: print(*a, flush=True))
