"""What a local search exposes: Ray's ports, its dashboard, its auth token, names from users.

(Checkpoints load with ``weights_only=True``: tests/test_families.py. YAML is read safely:
tests/test_spaces.py. A killed driver leaves no Ray process behind: tests/test_faults.py.)
"""
from __future__ import annotations

import stat

import pytest

from search import ray_start
from search.manifest import experiment_name
from search.options import NAME_RULE, SearchOptions
from search.ray_start import protect_auth_token
from spaces import parse_space

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def ray_listeners() -> dict[str, list[str]]:
    """Listening TCP/UDP sockets of this process and every process it started (the session's Ray)."""
    import psutil  # Ray's own copy

    me = psutil.Process()
    found: dict[str, list[str]] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            sockets = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN or (sock.type == 2 and not sock.raddr):  # TCP listen, UDP bound
                found.setdefault(f"{proc.pid} {name}", []).append(f"{sock.laddr.ip}:{sock.laddr.port}")
    return found


@pytest.mark.ray
def test_local_ray_listens_on_loopback_only_without_dashboard(ray_session):
    assert ray_session.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    listeners = ray_listeners()
    names = " ".join(listeners)
    assert "gcs_server" in names and "raylet" in names, listeners  # the session's Ray is there to look at
    exposed = {proc: addrs for proc, addrs in listeners.items()
               if any(addr.rsplit(":", 1)[0] not in LOOPBACK for addr in addrs)}
    assert not exposed, f"bound beyond the loopback: {exposed}"
    assert not any(addr.endswith(":8265") for addrs in listeners.values() for addr in addrs)  # no dashboard


@pytest.mark.ray
def test_auth_token_is_private_after_start(ray_session):
    path = ray_start.auth_token_path()
    if path is None or not path.exists():
        pytest.skip("token authentication is off here")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_start_ray_asks_for_a_fresh_loopback_ray(monkeypatch):
    import ray
    from ray._private import ray_constants

    seen = {}

    def init(**kwargs):
        seen.update(kwargs, cluster_switch=ray_constants.ENABLE_RAY_CLUSTER)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray_start, "reap_local_ray_with_driver", lambda pids: None)
    monkeypatch.setattr(ray_start, "protect_auth_token", lambda create=False: None)
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_start.start_ray(SearchOptions(num_cpus=2))
    assert seen["address"] == "local"  # never an existing cluster that RAY_ADDRESS or `ray start` names
    assert seen["include_dashboard"] is False and seen["cluster_switch"] is False
    assert ray_constants.ENABLE_RAY_CLUSTER == before  # restored for anything else in the process


@pytest.mark.parametrize("setting, census", [(None, False), ("1", True)])
def test_ray_usage_statistics_are_off_unless_asked_for(setting, census):
    """valley's Ray sends no usage statistics unless RAY_USAGE_STATS_ENABLED=1; without them Tune's
    count of the callbacks it was given (which imports MLflow, a second per search) is not taken."""
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path

    if census and importlib.util.find_spec("mlflow") is None:
        pytest.skip("MLflow is not installed (the [mlflow] extra)")
    code = ("import sys; from search.ray_start import tune_environment; tune_environment(); "
            "from ray.air._internal import usage; from ray.tune import Callback; "
            "usage.tag_callbacks([Callback()]); from ray._common.usage import usage_lib; "
            "print(usage_lib.usage_stats_enabled(), 'mlflow' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_USAGE_STATS_ENABLED"}
    if setting:
        env["RAY_USAGE_STATS_ENABLED"] = setting
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", code], cwd=root, env={**env, "PYTHONPATH": str(root)},
                         capture_output=True, text=True, check=True)
    assert run.stdout.split() == [str(census), str(census)], run.stderr


def test_auth_token_created_private_and_tightened(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    token = tmp_path / ".ray" / "auth_token"
    protect_auth_token(create=True)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700

    token.chmod(0o644)  # as Ray writes it
    before = token.read_text()
    protect_auth_token()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == before

    token.unlink()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    protect_auth_token(create=True)
    assert not token.exists()


def test_default_experiment_name_is_a_safe_folder_name():
    space = parse_space({"family": "mlp", "metric": "val_loss", "mode": "min"}, name="../my space;rm -rf ~")
    name = experiment_name(space, "digits")
    assert NAME_RULE.match(name) and "/" not in name and " " not in name and ";" not in name


@pytest.mark.parametrize("name", ["../up", "/abs", ".hidden", "a/b", "x" * 101, "semi;colon", ""])
def test_names_that_could_escape_the_results_folder_are_refused(name, tmp_path):
    from search.run import SearchError, prepare

    space = parse_space({"family": "mlp", "dataset": "synthetic", "metric": "val_loss", "mode": "min"})
    with pytest.raises(SearchError, match="--name must be letters"):
        prepare(space, SearchOptions(name=name or " ", storage=str(tmp_path)))
    from search.plans import load_plan, start_plan

    with pytest.raises(SearchError, match="--name must be letters"):  # a plan's folder too (it wrote to ../up)
        start_plan(load_plan("plan-mlp-digits"), SearchOptions(name=name or " ", storage=str(tmp_path / "results")))
    assert list(tmp_path.iterdir()) == []  # refused before the results folder is touched
