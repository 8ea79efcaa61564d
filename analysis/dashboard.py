"""A small read-only web dashboard over a results folder (standard library only).

``/`` lists every experiment and plan with its status and progress, and
reloads itself every 10 s while any is running; ``/exp/<name>`` (and
``/exp/<plan>/<stage>``) shows that experiment's report, made on the fly and
cached until its files change. Only GET and HEAD are served; any path that
would leave the results folder (``..``, encoded or not, absolute paths,
symlinks pointing out) is refused with 403.
"""
from __future__ import annotations

import functools
import html
import json
import os
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from analysis.format import FAILED, MANIFEST, PLAN_STATE, driver_gone
from analysis.load import Experiment, ResultsError, find_results, is_experiment, is_plan, load, mixed, progress

INDEX_REFRESH_S = 10
REPORT_REFRESH_S = 30
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
                                "img-src 'self' data: blob:; font-src data:; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'none'"),
}


class Refused(Exception):
    """A request for a path outside the results folder."""


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, address: tuple[str, int]) -> None:
        self.root = root
        self._cache: dict[tuple[str, Path], tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        super().__init__(address, Handler)

    def cached(self, kind: str, folder: Path, make: Callable[[], Any]) -> Any:
        """``make()``, reused until the files under ``folder`` change, or the driver that a 'running'
        valley.json or plan.json names is gone (killed outright, it changed no file)."""
        key, stamp = (kind, folder), (signature(folder), drivers_gone(folder))
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = make()
        with self._lock:
            self._cache[key] = (stamp, value)
        return value

    def experiment(self, folder: Path) -> Experiment:
        return self.cached("load", folder, lambda: load(folder))


def signature(folder: Path, depth: int = 2) -> tuple[int, int]:
    """(files seen, newest modification time in ns) of an experiment's or plan's result files: every
    ``*.json`` and ``error.txt`` down to two folders below (a plan's stage, then its trial)."""
    count, newest = 0, 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return count, newest
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth and not entry.name.startswith("checkpoint_"):
                    found = signature(Path(entry.path), depth - 1)
                    count, newest = count + found[0], max(newest, found[1])
            elif entry.name.endswith(".json") or (entry.name == "error.txt" and depth < 2):
                newest = max(newest, entry.stat().st_mtime_ns)
                count += 1
        except OSError:
            continue
    return count, newest


def drivers_gone(folder: Path) -> tuple[bool, ...]:
    """For the folder's valley.json and plan.json: whether each reads 'running' with its driver gone."""
    gone = []
    for name in (MANIFEST, PLAN_STATE):
        try:
            state = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        gone.append(isinstance(state, dict) and driver_gone(state) is not None)
    return tuple(gone)


def resolve(root: Path, parts: list[str]) -> Path:
    """The folder named by URL path segments, which must stay inside ``root``; raises Refused."""
    if not parts:
        raise Refused("empty name")
    for part in parts:
        if part in ("", ".", "..") or part.startswith(".") or any(c in part for c in "/\\\x00"):
            raise Refused(f"bad path segment {part!r}")
    folder = root.joinpath(*parts)
    try:
        real = folder.resolve(strict=True)
    except (OSError, RuntimeError):
        raise FileNotFoundError(folder) from None
    if not real.is_relative_to(root):  # a symlink pointing out of the results folder
        raise Refused(f"{folder} leaves the results folder")
    return folder


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "valley-dashboard"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # POST, PUT, DELETE, ... and any made-up method
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        body = _page("405", "<p>This dashboard is read-only: GET and HEAD only.</p>").encode()
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, body, extra={"Allow": "GET, HEAD"})

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("VALLEY_DASHBOARD_LOG"):
            super().log_message(format, *args)

    def _respond(self, send_body: bool) -> None:
        raw = urllib.parse.urlsplit(self.path).path
        try:
            status, body, content_type, extra = self._route(raw)
        except Refused:
            status, text = HTTPStatus.FORBIDDEN, "<p>That path is outside the results folder.</p>"
            body, content_type, extra = _page("403", text).encode(), "text/html; charset=utf-8", {}
        except FileNotFoundError:
            status, text = HTTPStatus.NOT_FOUND, '<p>No such experiment. <a href="/">All experiments</a></p>'
            body, content_type, extra = _page("404", text).encode(), "text/html; charset=utf-8", {}
        except Exception as err:  # a broken experiment folder must not take the dashboard down
            status, text = HTTPStatus.INTERNAL_SERVER_ERROR, html.escape(f"{type(err).__name__}: {err}")
            body = _page("500", f"<p>Could not read it: {text}</p>").encode()
            content_type, extra = "text/html; charset=utf-8", {}
        self._send(status, body, content_type, extra, send_body)

    def _route(self, raw: str) -> tuple[HTTPStatus, bytes, str, dict[str, str]]:
        html_type = "text/html; charset=utf-8"
        if raw in ("/", "/index.html"):
            return HTTPStatus.OK, index_page(self.server).encode(), html_type, {"Cache-Control": "no-store"}
        if raw == "/plotly.js":
            return (HTTPStatus.OK, _plotlyjs(), "text/javascript; charset=utf-8",
                    {"Cache-Control": "public, max-age=86400"})
        if raw.startswith("/exp/"):
            try:
                parts = [urllib.parse.unquote(p, errors="strict") for p in raw[len("/exp/"):].split("/")]
            except UnicodeDecodeError:
                raise Refused(raw) from None
            if parts and parts[-1] == "" and len(parts) > 1:
                parts = parts[:-1]  # a trailing slash
            folder = resolve(self.server.root, parts)
            if len(parts) > 2 or not (is_experiment(folder) or is_plan(folder)):  # an experiment, plan or stage
                raise FileNotFoundError(folder)
            return HTTPStatus.OK, report_page(self.server, folder).encode(), html_type, {"Cache-Control": "no-store"}
        if ".." in raw.split("/") or "%2e" in raw.lower():
            raise Refused(raw)
        raise FileNotFoundError(raw)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str = "text/html; charset=utf-8",
              extra: dict[str, str] | None = None, send_body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)


@functools.cache
def _plotlyjs() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


def report_page(server: DashboardServer, folder: Path) -> str:
    from analysis.report import render_report

    def make() -> str:
        experiment = server.experiment(folder)
        refresh = REPORT_REFRESH_S if experiment.status == "running" else None
        return render_report(experiment, plotlyjs="/plotly.js", refresh_s=refresh, index_url="/")

    return server.cached("report", folder, make)


def index_page(server: DashboardServer) -> str:
    """Every experiment and plan in the results folder: status, progress, best metric, last update."""
    e = html.escape
    rows, running = [], False
    for folder in find_results(server.root):
        if not folder.resolve().is_relative_to(server.root):
            continue
        href = "/exp/" + urllib.parse.quote(folder.name, safe="")
        try:
            experiment = server.experiment(folder)
        except Exception as err:
            rows.append(f'<tr><td><a href="{e(href)}">{e(folder.name)}</a></td><td colspan="6" class="bad">'
                        f"unreadable: {e(f'{type(err).__name__}: {err}')}</td></tr>")
            continue
        running |= experiment.status == "running"
        rows.append(_index_row(experiment, href, folder.name, nested=False, answer=confirmed_answer(experiment)))
        states = experiment.manifest.get("stages") if experiment.kind == "plan" else None
        confirmed = {name: confirmed_summary(state) for state in (states or {}).values() if isinstance(state, dict)
                     for name in state.get("experiments") or ()}
        for stage_name, stage in experiment.stages.items():
            stage_href = f"{href}/{urllib.parse.quote(stage_name, safe='')}"
            # a confirm stage's best single seed is no answer: it was its luckiest, perhaps of a losing configuration
            rows.append(_index_row(stage, stage_href, stage_name, nested=True, answer=confirmed.get(stage_name, "")))
    refresh = f'<meta http-equiv="refresh" content="{INDEX_REFRESH_S}">' if running else ""
    if rows:
        table = ("<table><thead><tr><th>experiment</th><th>kind</th><th>status</th><th>progress</th>"
                 "<th>done</th><th>running</th><th>failed</th><th>best</th><th>updated</th></tr></thead><tbody>"
                 + "".join(rows) + "</tbody></table>")
    else:
        table = "<p>No experiments yet. Start one with <code>valley search SPACE</code>.</p>"
    note = f"Reloads every {INDEX_REFRESH_S} s while an experiment is running." if running else ""
    body = (f"<header><h1>valley experiments</h1></header><p class=\"note\">{e(str(server.root))} "
            f"&middot; {time.strftime('%H:%M:%S')} {note}</p><section>{table}</section>")
    return _page("valley experiments", body, head=refresh)


def _index_row(experiment: Experiment, href: str, name: str, nested: bool, answer: str = "") -> str:
    e = html.escape
    counts = progress(experiment.trials)
    if experiment.status != "running":  # its unfinished trials run no more: an interrupted search showed them running
        counts["active"] = 0
    elif experiment.manifest.get("trials_planned"):  # the folder holds the trials begun: 2/2 of a 14-trial grid
        counts["total"] = max(counts["total"], int(experiment.manifest["trials_planned"]))
    share = counts["done"] + counts["failed"]
    percent = 100 * share / counts["total"] if counts["total"] else 0
    metric, best = experiment.metric, "-"
    trials = experiment.trials
    values = trials[~trials["status"].isin(FAILED)][metric].dropna() if {metric, "status"} <= set(trials) else []
    if answer:
        best = answer
    elif mixed(trials):  # a folder of experiments on different data sets or families: no best across them
        best = "per experiment"
    elif len(values):  # a trial that diverged after a good epoch is no best: the report's top table leaves it out
        best = f"{metric} {(values.min() if experiment.mode == 'min' else values.max()):.4g}"
    updated = _age(signature(experiment.path)[1])
    status = experiment.status
    cls = ' class="stage"' if nested else ""
    kind = "folder" if experiment.kind == "plan" and not experiment.manifest else experiment.kind  # no plan.json
    return (f'<tr{cls}><td class="name"><a href="{e(href)}">{e(name)}</a></td><td>{e(kind)}</td>'
            f'<td><span class="status {e(status)}">{e(status)}</span></td>'
            f'<td><div class="bar" title="{share} of {counts["total"]} trials finished">'
            f'<span style="width:{percent:.0f}%"></span></div></td>'
            f'<td class="num">{counts["done"]}/{counts["total"]}</td><td class="num">{counts["active"]}</td>'
            f'<td class="num">{counts["failed"]}</td><td>{e(best)}</td><td>{e(updated)}</td></tr>')


def confirmed_answer(experiment: Experiment) -> str:
    """A plan's answer, where a confirm stage has given one: its winner's test metric, the mean over its
    seeds (one seed's best validation loss said less, and flattered it); else ""."""
    stages = experiment.manifest.get("stages") if experiment.kind == "plan" else None
    for state in reversed(list((stages or {}).values())):
        answer = confirmed_summary(state) if isinstance(state, dict) else ""
        if answer:
            return answer
    return ""


def confirmed_summary(state: dict[str, Any]) -> str:
    """A confirm stage's winner (its plan.json state), as :func:`confirmed_answer` says it; "" for any other
    stage, or a confirm stage that has not chosen one."""
    summary = state.get("summary")
    if state.get("kind") != "confirm" or not isinstance(summary, dict) or summary.get("winner_mean") is None:
        return ""
    seeds = len(summary.get("seeds") or [])
    return f"{summary.get('metric', 'test')} {summary['winner_mean']:.4g} (confirmed, mean of {seeds} seeds)"


def _age(mtime_ns: int) -> str:
    if not mtime_ns:
        return "-"
    seconds = max(0.0, time.time() - mtime_ns / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _page(title: str, body: str, head: str = "") -> str:
    from analysis.report import CSS

    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{head}<title>{html.escape(title)}</title>'
            f"<style>{CSS}{INDEX_CSS}</style></head><body><main>{body}</main></body></html>\n")


INDEX_CSS = """
section table { border-collapse: collapse; width: 100%; font-size: 14px; }
section th { text-align: left; border-bottom: 2px solid var(--line); padding: 6px 10px; white-space: nowrap; }
section td { border-bottom: 1px solid var(--line); padding: 6px 10px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name { word-break: break-all; }
tr.stage td.name { padding-left: 30px; }
tr.stage td { font-size: 13px; color: var(--muted); }
td.bad { color: #b91c1c; }
.bar { width: 120px; height: 8px; background: #e4e7eb; border-radius: 4px; overflow: hidden; }
.bar span { display: block; height: 100%; background: #34a853; }
"""


def make_server(results: str | Path, host: str = "127.0.0.1", port: int = 8050) -> DashboardServer:
    """The dashboard's server, bound but not yet serving (port 0 picks a free port)."""
    root = Path(results).expanduser()
    if not root.is_dir():
        raise ResultsError(f"results folder must be an existing folder, got {str(root)!r}; pass the --storage "
                           "folder of `valley search` (default results/)")
    if not 0 <= port <= 65535:
        raise ResultsError(f"--port must be 0 to 65535 (0 picks a free one), got {port}")
    try:
        return DashboardServer(root.resolve(), (host, port))
    except OSError as err:
        raise ResultsError(f"the dashboard cannot listen on {host}:{port} ({err.strerror or err}); pass another "
                           "--port (0 picks a free one) or --host") from None


def serve(results: str | Path, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Serve the dashboard until Ctrl-C."""
    server = make_server(results, host, port)
    where = f"http://{host if ':' not in host else f'[{host}]'}:{server.server_address[1]}/"
    print(f"valley dashboard: {where} over {server.root} (read-only; Ctrl-C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"valley dashboard: note: bound to {host}, so anyone who can reach this machine can read the results",
              flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
