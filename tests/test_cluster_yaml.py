"""cluster.yaml: valid for Ray's cluster launcher, and keeps valley's own rules.

Validation is what `ray up` does before it touches a cloud: fill in the AWS defaults
(``prepare_config``) and check the result against the JSON schema shipped in the ray package
(``validate_config``, ray/autoscaler/ray-schema.json). Nothing here starts Ray or reaches AWS.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def config(raw) -> dict:
    """The config as `ray up` sees it after merging the AWS defaults."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(raw))


def gpu_worker_types(config: dict) -> dict:
    head = config["head_node_type"]
    return {name: t for name, t in config["available_node_types"].items()
            if name != head and t.get("resources", {}).get("GPU", 0) > 0}


def ray_start_commands(config: dict) -> list[str]:
    cmds = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    return [c for c in cmds if "ray start" in c]


def exported(command: str, name: str) -> str | None:
    """The value ``command`` exports for ``name`` before it runs ``ray start`` (None if not)."""
    before_start = command.split("ray start", 1)[0]
    if not re.search(rf"\bexport\b[^;\n]*\b{name}=", before_start):
        return None
    values = re.findall(rf"\b{name}=([^\s;]+)", before_start)
    return values[-1]  # a later assignment wins


# -- Ray's own validation ---------------------------------------------------------------------

def test_raw_file_matches_rays_schema(raw):
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(raw, json.loads(schema_path.read_text()))


def test_validates_as_ray_up_would(config):
    from ray.autoscaler._private.util import validate_config

    validate_config(config)  # raises on any schema or consistency error
    assert config["provider"]["type"] == "aws"


# -- valley's invariants ----------------------------------------------------------------------

def test_head_has_no_gpus(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU") == 0
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--num-gpus=0" in head_start


def test_autoscaling_multi_gpu_workers(config):
    workers = gpu_worker_types(config)
    assert workers, "no worker type declares GPUs"
    for name, worker in workers.items():
        assert worker["resources"]["GPU"] >= 4, f"{name}: fewer than 4 GPUs per node"
        assert 0 <= worker["min_workers"] <= worker["max_workers"] <= config["max_workers"], name
        assert worker["max_workers"] >= 1, name
    assert config["idle_timeout_minutes"] > 0
    # Docker must hand the GPUs to the workers' containers.
    assert "--gpus all" in config["docker"].get("worker_run_options", [])
    assert "--gpus all" not in config["docker"].get("run_options", [])


def test_token_auth_in_every_ray_start(config):
    mounts = config["file_mounts"]
    starts = ray_start_commands(config)
    assert len(starts) == 2, "expected one head and one worker `ray start`"
    for command in starts:
        assert exported(command, "RAY_AUTH_MODE") == "token", command
        token_path = exported(command, "RAY_AUTH_TOKEN_PATH")
        assert token_path, f"no RAY_AUTH_TOKEN_PATH before ray start: {command}"
        remote = token_path.replace("$HOME/", "~/")
        # The token file is shipped to every node from the user's default token location.
        assert mounts.get(remote) == "~/.ray/auth_token", (remote, mounts)


def test_shells_on_nodes_use_token_auth(config):
    """`ray exec` / `ray attach` drivers (valley search --address auto) need the token too."""
    setup = " ".join(config["setup_commands"])
    assert "~/.bashrc" in setup
    assert "RAY_AUTH_MODE=token" in setup and "RAY_AUTH_TOKEN_PATH=" in setup


def test_dashboard_on_loopback_only(config):
    head_start = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert len(head_start) == 1
    assert "--dashboard-host=127.0.0.1" in head_start[0]
    everything = json.dumps(config)
    assert "0.0.0.0" not in everything


def test_no_inbound_rules_added(config):
    """Ray's group allows SSH and intra-cluster traffic only; we must not widen it."""
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    assert rules == [], "cluster.yaml must not open extra ports"


def test_repository_is_shipped_and_installed(config):
    mounts = config["file_mounts"]
    repo_mounts = [remote for remote, local in mounts.items()
                   if (CLUSTER_YAML.parent / Path(local).expanduser()).resolve() == REPO]
    assert repo_mounts, f"no file_mounts entry ships the repository root: {mounts}"
    assert (REPO / "pyproject.toml").is_file()
    setup = config["setup_commands"]
    assert any("pip install" in c and f"-e {remote}" in c for c in setup for remote in repo_mounts)
    # The local virtualenv and Git history stay home.
    assert ".venv" in config["rsync_exclude"] and ".git" in config["rsync_exclude"]


def test_ray_versions_agree(config):
    import ray

    image = config["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-(gpu|cu\d+)", image)
    assert match, image
    assert match.group(1) == ray.__version__, (
        f"cluster image runs Ray {match.group(1)}, this checkout Ray {ray.__version__}")
    pins = set(re.findall(r"ray\[[^\]]*\]==([\d.]+)", " ".join(config["setup_commands"])))
    assert pins == {ray.__version__}, pins


def test_placeholders_are_marked_edit():
    """Every value a user must replace sits under (or on) an `# EDIT:` comment."""
    lines = CLUSTER_YAML.read_text().splitlines()
    for number, line in enumerate(lines):
        if "EDIT-ME" in line and not line.lstrip().startswith("#"):
            window = lines[max(0, number - 8): number + 1]
            assert any("EDIT:" in above for above in window), f"line {number + 1}: {line.strip()}"
