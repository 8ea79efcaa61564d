"""Will the trials fit? Before a local Ray starts, and once Ray (local or a cluster) is up."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from search.options import SearchError, SearchOptions


def local_cpus() -> int:
    """CPUs this process may run on (what a local Ray gets without --num-cpus, cgroup quotas aside)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def check_local_resources(opts: SearchOptions) -> None:
    """Before a local Ray starts: one trial must fit this machine, or it would wait forever."""
    cpus = opts.num_cpus or local_cpus()
    if opts.cpus_per_trial > cpus:
        raise SearchError(f"--cpus-per-trial {opts.cpus_per_trial:g} asks for more CPUs than the local Ray has "
                          f"({cpus}); lower --cpus-per-trial or raise --num-cpus")
    if opts.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if opts.gpus_per_trial > max(gpus, 1) or gpus == 0:
            raise SearchError(f"--gpus-per-trial {opts.gpus_per_trial:g} asks for more GPUs than this machine has "
                              f"({gpus} visible to torch); use --gpus-per-trial 0 here, a fraction such as 0.5 "
                              "to pack trials on one GPU, or a GPU cluster with --address")


def check_gpu_asked(space: Any, opts: SearchOptions) -> None:
    """A config that asks for CUDA needs a GPU per trial: Ray hides every GPU from a trial given none, so
    each trial would fail, on a GPU machine too."""
    from spaces import Dist

    values = [source.get("device") for source in (opts.overrides, space.params, *space.grid)]
    asked = sorted({str(a) for v in values if v is not None for a in (v.args if isinstance(v, Dist) else [v])
                    if str(a).startswith("cuda")})
    if asked and opts.gpus_per_trial <= 0:
        raise SearchError(f"device {asked[0]} needs a GPU for each trial, and --gpus-per-trial is 0 (Ray then "
                          "shows a trial no GPU); pass --gpus-per-trial 1 (or a fraction such as 0.5), or set "
                          "device to auto or cpu")


def autoscaler_node_types() -> list[dict[str, float]]:
    """Resources of the node types the cluster launcher's autoscaler may add (on the head only)."""
    import yaml

    path = Path.home() / "ray_bootstrap_config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError):
        return []
    types = (config or {}).get("available_node_types") or {}
    return [dict(node.get("resources") or {}) for node in types.values() if isinstance(node, dict)]


def check_cluster(opts: SearchOptions, root: Path) -> None:
    """After Ray starts, before any trial: one trial fits a node, and every node sees the results folder."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    capacity = [node.get("Resources", {}) for node in nodes] + autoscaler_node_types()
    for key, flag, asked in (("CPU", "--cpus-per-trial", opts.cpus_per_trial),
                             ("GPU", "--gpus-per-trial", opts.gpus_per_trial)):
        largest = max((float(res.get(key, 0)) for res in capacity), default=0.0)
        if asked > 0 and largest + 1e-9 < asked:
            where = "the local Ray" if opts.address is None else "any node of the cluster at --address"
            fix = ("use --gpus-per-trial 0, or a fraction such as 0.5 to pack trials on one GPU"
                   if key == "GPU" else "lower --cpus-per-trial")
            raise SearchError(f"{flag} {asked:g} asks for more {key}s than {where} has (at most {largest:g} "
                              f"per node); {fix}")
    if opts.address and len(nodes) > 1:
        check_shared_storage(root, nodes)


def check_shared_storage(root: Path, nodes: list[dict[str, Any]]) -> None:
    """Since Ray 2.7 trials write checkpoints straight to --storage: every node must see the same folder."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = root / f".valley-shared-{uuid.uuid4().hex[:12]}"
    probe.write_text("")

    def sees(path: str) -> bool:
        import os

        return os.path.exists(path)

    remote = ray.remote(num_cpus=0, max_retries=0)(sees)
    try:
        refs = {node["NodeID"]: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(str(probe)) for node in nodes}
        blind = [node for node, ref in refs.items() if not ray.get(ref, timeout=60)]
    except Exception as err:  # noqa: BLE001 - a node that cannot answer cannot be trusted with checkpoints
        raise SearchError(f"could not check that every node sees --storage {root} ({type(err).__name__}); "
                          "check the cluster with `ray status`") from None
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise SearchError(f"--storage {root} is not visible on {len(blind)} of {len(nodes)} nodes (e.g. node "
                          f"{blind[0][:12]}); a multi-node search needs one shared folder for checkpoints: mount "
                          "NFS (e.g. EFS at /mnt/valley) on every node and pass --storage /mnt/valley/results")


