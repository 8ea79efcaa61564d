"""Starting Ray: join a cluster, or start a local Ray that only this machine can reach.

A local Ray binds to 127.0.0.1, runs without its dashboard, keeps its auth token private to
its owner, and dies with its driver (``search/reaper.py``). The environment Tune reads is set
here, when a search starts, never when a module is imported.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search.options import SearchError, SearchOptions
from search.state_files import atomic_state_uploads

# Tune's automatic CSV and TensorBoard loggers cost time per result and nothing reads them (the JSON
# logger, result.json and params.json, is added back explicitly; TensorBoard's by search.loggers);
# the old progress output stays off the terminal; the experiment snapshot, what a killed driver can
# resume and readers of a running search see, is timed by Tune's "auto" rule with valley's floor;
# Ray's usage statistics (on unless switched off, sent hourly to usage-stats.ray.io) are off; a failed
# trial's traceback goes to its error.txt, not the terminal (40 lines a trial, under --quiet too: valley
# says its first line, search.progress).
TUNE_ENVIRONMENT = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0",
                    "TUNE_GLOBAL_CHECKPOINT_S": "auto", "RAY_USAGE_STATS_ENABLED": "0",
                    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}
SNAPSHOT_FLOOR_S = 1.0
# What a local Ray's workers import before they take work (Ray's ``preload_python_modules``). Ray
# starts one idle worker per CPU as soon as its raylet is up (``enable_worker_prestart``; by default
# only once the driver has connected, half a second later here), so they load torch and the training
# loop while ``ray.init`` returns and the driver builds the search. Not ``torch._dynamo``: the loop's
# optimisers do not need it (``trainables.eager``).
WORKER_PRELOAD = ("trainables.loop",)


def tune_environment() -> None:
    """Set what Tune reads when a Tuner runs, unless the user set it."""
    for key, value in TUNE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    atomic_state_uploads()
    no_restore_advice()
    no_result_grid_warning()
    drop_messages("ray.tune.tune", "Trials did not complete")  # "[train_1c402_00001]": the trial lines say it
    snapshot_every_second_or_5_percent()
    no_callback_census_without_usage_statistics()


def no_callback_census_without_usage_statistics() -> None:
    """Tune counts the callbacks it is given for Ray's usage statistics by importing its MLflow, W&B,
    Comet and Aim integrations, and the first imports MLflow wherever it is installed: a second on
    every search. With the statistics off the count goes nowhere, so it is not taken."""
    from ray._common.usage import usage_lib
    from ray.air._internal import usage

    if getattr(usage.tag_callbacks, "_valley", False):
        return
    original = usage.tag_callbacks

    def tag_callbacks(callbacks: Any) -> bool:
        return usage_lib.usage_stats_enabled() and original(callbacks)

    tag_callbacks._valley = True  # type: ignore[attr-defined]
    usage.tag_callbacks = tag_callbacks


def snapshot_every_second_or_5_percent() -> None:
    """Tune's "auto" snapshot period: 19 x the time the last snapshot took (5 % of the driver's time
    at most), but at least 10 s. valley keeps the rule with a floor of 1 s, so a killed driver of a
    small search loses at most a second of results, while the snapshot of thousands of trials
    (30 KB each) is not rewritten every second (which made a 3,000-trial search's driver spend
    most of its time on it; ``benchmarks/scale.py``)."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

    if getattr(Manager._update_auto_checkpoint_time, "_valley", False):
        return
    original_init = Manager.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if self._auto_checkpoint_enabled:
            self._checkpoint_period = SNAPSHOT_FLOOR_S

    def update(self: Any, time_taken: float) -> None:
        if self._auto_checkpoint_enabled:
            self._checkpoint_period = max(SNAPSHOT_FLOOR_S, time_taken * 19)

    update._valley = True  # type: ignore[attr-defined]
    Manager.__init__, Manager._update_auto_checkpoint_time = __init__, update


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While a local Ray starts, make it take 127.0.0.1 as its node address.

    Ray 2.60 turns ``_node_ip_address="127.0.0.1"`` into the machine's routable
    address, so its gRPC servers (GCS, raylet, every worker) listen on all
    interfaces. With its "no cluster" switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``,
    the default on macOS and Windows) the node address is 127.0.0.1 and every
    server binds there. The switch is read when ``ray`` is imported, so the
    constant is set for the duration of ``ray.init`` instead.
    """
    from ray._private import ray_constants

    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def own_process_groups() -> Iterator[None]:
    """While a local Ray starts, start each of its processes in a process group of its own.

    ``timeout``, and a shell or batch system that ends a job, send SIGTERM to the driver's whole
    process group. Ray's GCS and raylet, in that group, died at once, so the driver's orderly stop
    (``search.options.search_signals``) waited a minute on a GCS that was gone and then aborted: no trials.csv,
    the experiment left 'running'. In groups of their own they hear only the driver, which stops them
    itself (and the kernel's parent-death signal, and the reaper, when the driver is killed
    outright); the workers the raylet starts are in the raylet's group.
    """
    from ray._private import services

    popen = services.ConsolePopen

    class OwnGroup(popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, preexec_fn: Any = None, **kwargs: Any) -> None:
            def in_own_group() -> None:
                os.setpgid(0, 0)
                if preexec_fn is not None:
                    preexec_fn()

            super().__init__(*args, preexec_fn=in_own_group, **kwargs)

    services.ConsolePopen = OwnGroup
    try:
        yield
    finally:
        services.ConsolePopen = popen


def auth_token_path() -> Path | None:
    """The token file Ray's token authentication reads, unless the token comes from the environment."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def protect_auth_token(create: bool = False) -> None:
    """Keep Ray's auth token readable by its owner only (Ray writes it with the default umask, 0644).

    With ``create``, a missing default token is written here, 0600 from the start, so Ray finds
    it instead of writing a world-readable one.
    """
    path = auth_token_path()
    if path is None or os.environ.get("RAY_AUTH_MODE", "token").lower() == "disabled":
        return
    try:
        if create and not path.exists() and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        if path.exists() and path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except FileExistsError:
        pass
    except OSError as err:
        print(f"valley: warning: could not restrict {path} to its owner ({err.strerror}); "
              f"run `chmod 600 {path}`", file=sys.stderr)


def descendants() -> set[int]:
    """Process ids of everything this process has started, and they in turn."""
    import psutil  # Ray's own copy, importable once ray is

    return {child.pid for child in psutil.Process().children(recursive=True)}


def reap_local_ray_with_driver(pids: list[int]) -> None:
    """Start the reaper for the processes that appeared while Ray started (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    if pids:
        reaper = Path(__file__).with_name("reaper.py")
        subprocess.Popen([sys.executable, str(reaper), str(os.getpid()), *map(str, pids)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         close_fds=True)


def end_monitor_before_ray(pids: list[int]) -> None:
    """At exit, kill the local Ray's autoscaler monitor before Ray's own shutdown reaches it.

    ``ray.shutdown`` stops the GCS and then sends the monitor SIGTERM, which the monitor answers by
    reporting its own end to the GCS that is gone; it never exits within the second Ray gives it,
    and Ray then sends SIGKILL: every local search ended a second later than it had to. Handlers
    registered with ``atexit`` run last-first, and Ray registers its shutdown when it is imported,
    so this one runs before it, and the end state is Ray's own, a second sooner. (A local Ray has
    no nodes to scale; nothing of the monitor's is read.)"""
    import psutil

    monitors = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if any(part.endswith(os.path.join("autoscaler", "_private", "monitor.py")) for part in process.cmdline()):
                monitors.append(process)
    if monitors:
        atexit.register(kill, monitors)


def kill(processes: list[Any]) -> None:
    """SIGKILL each ``psutil.Process`` that is still the process it was (psutil checks its start time)."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


class Drop(logging.Filter):
    """Drops the records of a logger whose message starts with ``prefix``; lets every other through."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def drop_messages(logger_name: str, prefix: str) -> None:
    """Drop ``logger_name``'s messages that start with ``prefix`` (once, however often it is called)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, Drop) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(Drop(prefix))


def no_token_notice() -> None:
    """A new local Ray turns token authentication on and says so, a warning on every search; valley's
    local Ray always has it (README › Security), so the notice is dropped. Only that message is."""
    drop_messages("ray._private.authentication.authentication_token_setup",
                  "Token authentication is enabled for this Ray cluster")


def no_restore_advice() -> None:
    """After Ctrl-C Tune advises ``Tuner.restore(path=..., trainable=...)``, which a valley experiment
    is not continued with: valley says `valley resume FOLDER` instead (``search.run.finish``). Tune's
    line before it (a second Ctrl-C skips the last snapshot) stays."""
    drop_messages("ray.tune.tune", "Experiment has been interrupted, but the most recent state was saved")


def no_result_grid_warning() -> None:
    """At the end of a fit Tune reads every trial's results into its ResultGrid, which valley does not use
    (it reads the folder itself), and warns of each trial with none yet ("Failed to fetch metrics ...
    FileNotFoundError"), a trial a resume had not begun again: it read as a failure where nothing failed."""
    drop_messages("ray.tune.analysis.experiment_analysis", "Failed to fetch metrics for")


def trials_on_prestarted_workers() -> None:
    """Let Tune's trial actors take the workers a local Ray starts ahead (and preloads).

    Tune gives its actors a runtime environment of one variable, ``PL_DISABLE_FORK=1`` (for
    PyTorch Lightning, ray#28197), and Ray starts a fresh worker for any actor whose environment
    differs from the idle workers'. The variable is set for the whole local Ray instead.
    """
    from ray.tune.execution import class_cache

    for key, value in class_cache.DEFAULT_ENV_VARS.items():
        os.environ.setdefault(key, value)
    class_cache.DEFAULT_ENV_VARS.clear()


def not_grpc(conn: Any, timeout: float = 5.0) -> str:
    """What a listener that is not a gRPC server (Ray's GCS is one) said to HTTP/2's opening, or "" if it
    answered as one does: with a SETTINGS frame (a 9-byte header whose fourth byte, the type, is 4)."""
    conn.settimeout(timeout)
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    reply = b""
    try:
        while len(reply) < 9:
            more = conn.recv(9 - len(reply))
            if not more:
                break
            reply += more
    except OSError:
        pass
    if len(reply) == 9 and reply[3] == 4:
        return ""
    if not reply:
        return f"it said nothing in {timeout:g} s to a gRPC client"
    return f"it answered {reply.decode('latin-1').splitlines()[0][:40]!r}"


def join_cluster(address: str) -> None:
    """``ray.init`` on a running cluster, or one line that says none answered there and what to do instead."""
    import socket

    import ray

    advice = ("start one (`ray up cluster.yaml`, or `ray start --head` on this machine), or leave out --address "
              "for a local Ray")
    if address.startswith(("http://", "https://")):  # the dashboard's address, Ray's job API: Ray raised ValueError
        raise SearchError(f"--address {address} is a web address (Ray's dashboard); give the cluster's GCS "
                          "address, host:6379 (`ray status` on the head prints it), or ray://host:10001")
    host, _, port = address.rpartition(":")
    if host and port.isdigit() and "://" not in address:  # Ray would retry a closed port for a minute or more
        try:
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                reply = "" if os.environ.get("RAY_USE_TLS", "0") not in ("0", "") else not_grpc(conn)
        except OSError as err:
            raise SearchError(f"--address {address}: no Ray cluster answers there ({err.strerror or err}); "
                              f"{advice}") from None
        if reply:  # Ray would wait on it for minutes, logging 'Timed out while waiting for GCS'
            raise SearchError(f"--address {address}: something listens there but it is not a Ray cluster "
                              f"({reply}); give the cluster's GCS address, host:6379 (`ray status` on the head "
                              "prints it), or ray://host:10001")
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as err:
        raise SearchError(f"--address {address}: no Ray cluster found ({str(err).splitlines()[0]}); {advice}") from None


def start_ray(opts: SearchOptions, family: str | None = None) -> None:
    """Join ``--address``, or start a local Ray: loopback only, dashboard off, token file private,
    its workers importing ``WORKER_PRELOAD`` and ``family``'s module before they take work."""
    import ray

    tune_environment()
    if ray.is_initialized():
        return
    with sigterm_kept():
        if opts.address:
            join_cluster(opts.address)
        else:
            start_local_ray(opts, family)


@contextlib.contextmanager
def sigterm_kept() -> Iterator[None]:
    """``ray.init`` makes SIGTERM ``sys.exit``; where the process had a handler of its own (the
    ``valley`` command's: SIGTERM as Ctrl-C, ``search.options.search_signals``), it keeps it. Where it had the
    default, Ray's stays, on purpose: a ``kill`` then exits through ``ray.shutdown`` (atexit), not around it."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if before not in (signal.SIG_DFL, None) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, before)


def start_local_ray(opts: SearchOptions, family: str | None) -> None:
    import ray

    from trainables import FAMILIES

    protect_auth_token(create=True)
    no_token_notice()
    trials_on_prestarted_workers()
    preload = [*WORKER_PRELOAD, *([FAMILIES[family]] if family in FAMILIES else [])]
    before = descendants()
    with loopback_only(), own_process_groups():  # address="local": a new Ray, even where RAY_ADDRESS points elsewhere
        ray.init(address="local", num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", configure_logging=True, logging_level="WARNING",
                 _system_config={"preload_python_modules": preload, "enable_worker_prestart": True})
    protect_auth_token()
    started = sorted(descendants() - before)
    reap_local_ray_with_driver(started)
    end_monitor_before_ray(started)
    atexit.register(drop_staging, Path(ray._private.worker._global_node.get_session_dir_path()) / "artifacts")


def drop_staging(artifacts: Path) -> None:
    """At exit, remove the local Ray's staging copies of what Tune wrote into the experiment folders (its
    snapshots, every session's, 90 MB at 3,000 trials): each search's end copied them there, whole
    (``search.state_files``), and nothing reads them again. They were left in /tmp/ray with Ray's logs,
    which stay. A driver killed outright leaves them, as before."""
    shutil.rmtree(artifacts, ignore_errors=True)
