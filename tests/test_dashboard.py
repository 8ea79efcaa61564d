"""The dashboard: a real server on a free port, fetched with the standard library."""
from __future__ import annotations

import http.client
import json
import shutil
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from analysis.dashboard import make_server
from analysis.load import ResultsError

DATA = Path(__file__).parent / "data"
HOSTILE = "<script>alert('x')<img src=x onerror=alert(1)>"  # a folder name cannot hold '/', so no </script>


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(base URL, results folder) of a dashboard over: an experiment, a plan, a hostile name, a symlink out."""
    root = tmp_path_factory.mktemp("dash")
    results = root / "results"
    shutil.copytree(DATA / "asha-digits", results / "asha-digits")
    shutil.copytree(DATA / "asha-digits", results / "plan" / "1-rough")
    shutil.copytree(DATA / "seeds-digits", results / "plan" / "2-confirm")
    shutil.copytree(DATA / "plain-ray", results / HOSTILE)
    shutil.copytree(DATA / "seeds-digits", root / "outside" / "secret")
    (results / "escape").symlink_to(root / "outside" / "secret")
    server = make_server(results, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", results
    server.shutdown()
    server.server_close()


def fetch(base: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    """Send ``path`` exactly as written (urllib would not, for some of the hostile ones)."""
    host = urllib.parse.urlsplit(base).netloc
    connection = http.client.HTTPConnection(host, timeout=30)
    connection.request(method, path)
    response = connection.getresponse()
    body = response.read().decode("utf-8", errors="replace")
    connection.close()
    return response.status, dict(response.getheaders()), body


def test_index_lists_experiments_and_plans(site):
    base, _ = site
    with urllib.request.urlopen(base + "/", timeout=30) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
        page = response.read().decode()
    for name in ("asha-digits", "plan", "1-rough", "2-confirm"):
        assert f">{name}</a>" in page
    assert 'href="/exp/plan/2-confirm"' in page and "13/14" in page
    assert "escape" not in page and "secret" not in page  # the symlink out of the results folder is not listed
    assert 'http-equiv="refresh"' not in page  # nothing is running


def test_index_escapes_names(site):
    base, _ = site
    _, _, page = fetch(base, "/")
    assert HOSTILE not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'href="/exp/%3Cscript%3Ealert%28%27x%27%29%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"' in page


def test_index_refreshes_while_an_experiment_runs(site):
    base, results = site
    manifest_path = results / "asha-digits" / "valley.json"
    original = manifest_path.read_text()
    manifest_path.write_text(json.dumps({**json.loads(original), "status": "running"}))
    try:
        _, _, page = fetch(base, "/")
        assert '<meta http-equiv="refresh" content="10">' in page
    finally:
        manifest_path.write_text(original)
    _, _, page = fetch(base, "/")
    assert 'http-equiv="refresh"' not in page


def test_an_interrupted_search_shows_no_trial_running(tmp_path):
    """Its unfinished trials were counted in the 'running' column ('done 0/2 | running 2') though nothing ran."""
    import re

    from analysis.dashboard import _index_row
    from analysis.load import load

    folder = shutil.copytree(DATA / "asha-digits", tmp_path / "asha-digits")
    manifest = json.loads((folder / "valley.json").read_text())

    def running_column(status: str) -> str:
        (folder / "valley.json").write_text(json.dumps({**manifest, "status": status}))
        return re.findall(r'<td class="num">(\d+)</td>', _index_row(load(folder), "/exp/a", "a", False))[0]

    assert running_column("running") != "0"  # its trials with no final word, while its search runs
    assert running_column("interrupted") == "0"


def test_a_running_search_counts_the_trials_it_will_run_not_those_begun(tmp_path):
    """A running search's folder holds only the trials Tune has begun: its 'done' read 2/2 and a full bar two
    trials into a 14-trial grid."""
    import re

    from analysis.dashboard import _index_row
    from analysis.load import load

    folder = shutil.copytree(DATA / "asha-digits", tmp_path / "asha-digits")
    manifest = json.loads((folder / "valley.json").read_text())
    begun = len(load(folder).trials)

    def done_column(status: str, planned: int | None) -> str:
        (folder / "valley.json").write_text(json.dumps({**manifest, "status": status, "trials_planned": planned}))
        return re.findall(r'<td class="num">(\d+/\d+)</td>', _index_row(load(folder), "/exp/a", "a", False))[0]

    assert done_column("running", begun + 10).endswith(f"/{begun + 10}")
    assert done_column("running", None).endswith(f"/{begun}")  # under a budget: not known
    assert done_column("completed", begun + 10).endswith(f"/{begun}")  # what ran, once it has ended


def test_a_search_whose_driver_is_killed_stops_reading_running(site):
    """The cached load was kept until a file changed, and a driver killed outright changes none: the index and
    the report read 'running' and reloaded for ever."""
    import subprocess
    import sys

    from analysis import format as fmt

    base, results = site
    manifest_path = results / "asha-digits" / "valley.json"
    original = manifest_path.read_text()
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = {**fmt.driver(), "pid": driver.pid, "since": fmt._process_start(driver.pid)}
        manifest_path.write_text(json.dumps({**json.loads(original), "status": "running", "driver": here}))
        for path in ("/", "/exp/asha-digits"):
            assert 'http-equiv="refresh"' in fetch(base, path)[2]
        driver.kill()
        driver.wait()
        for path in ("/", "/exp/asha-digits"):
            page = fetch(base, path)[2]
            assert 'http-equiv="refresh"' not in page and "interrupted" in page
    finally:
        driver.kill()
        manifest_path.write_text(original)


def test_experiment_page_renders_its_report(site):
    base, _ = site
    status, headers, page = fetch(base, "/exp/asha-digits")
    assert status == 200 and "Content-Security-Policy" in headers
    assert page.count('class="plotly-graph-div"') == 5 and '<script src="/plotly.js"></script>' in page
    assert '<a href="/">&larr; all experiments</a>' in page and "chose trial 9f306_00006" in page
    status, headers, script = fetch(base, "/plotly.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and len(script) > 1_000_000


def test_plan_and_stage_pages(site):
    base, _ = site
    status, _, page = fetch(base, "/exp/plan")
    assert status == 200 and page.count('class="plotly-graph-div"') == 7
    status, _, page = fetch(base, "/exp/plan/2-confirm/")
    assert status == 200 and "<h1>2-confirm</h1>" in page


def test_hostile_experiment_page_is_escaped(site):
    base, _ = site
    status, _, page = fetch(base, "/exp/" + urllib.parse.quote(HOSTILE, safe=""))
    assert status == 200 and "<img src=x" not in page and "<script>alert(" not in page
    assert "<h1>&lt;script&gt;alert(&#x27;x&#x27;)&lt;img src=x onerror=alert(1)&gt;</h1>" in page


@pytest.mark.parametrize("path", ["/exp/../outside/secret", "/exp/%2e%2e/outside/secret", "/exp/%2E%2E/%2e%2e/etc",
                                  "/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/exp//etc/passwd",
                                  "/exp/%2Fetc%2Fpasswd", "/exp/escape", "/exp/.hidden", "/exp/plan/..%2F..%2Fx",
                                  "/exp/%ff"])
def test_paths_outside_the_results_folder_are_refused(site, path):
    base, _ = site
    status, _, page = fetch(base, path)
    assert status == 403 and "secret" not in page


def test_unknown_paths_are_404(site):
    base, _ = site
    for path in ("/exp/missing", "/exp/plan/9-missing", "/favicon.ico", "/exp/asha-digits/9f306_00000/x"):
        assert fetch(base, path)[0] == 404, path


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_read_only(site, method):
    base, _ = site
    status, headers, _ = fetch(base, "/exp/asha-digits", method)
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_head_sends_headers_only(site):
    base, _ = site
    status, headers, body = fetch(base, "/", "HEAD")
    assert status == 200 and int(headers["Content-Length"]) > 0 and body == ""


def test_make_server_refuses_a_missing_folder_and_a_busy_port(site, tmp_path):
    base, results = site
    with pytest.raises(ResultsError, match="existing folder"):
        make_server(tmp_path / "missing", port=0)
    with pytest.raises(ResultsError, match="pass another --port"):
        make_server(results, port=int(base.rsplit(":", 1)[1]))


def test_the_index_best_leaves_out_failed_and_diverged_trials():
    """A trial that diverged after a good epoch read as the experiment's best on the index page."""
    from analysis.dashboard import _index_row
    from analysis.load import load

    experiment = load(DATA / "asha-digits")
    trials = experiment.trials
    assert trials.loc[trials["trial_id"] == "9f306_00013", "status"].item() == "failed"
    trials.loc[trials["trial_id"] == "9f306_00013", "best_val_loss"] = 1e-5
    best = trials.loc[trials["status"] != "failed", "best_val_loss"].min()
    row = _index_row(experiment, "/exp/asha-digits", "asha-digits", nested=False)
    assert f"best_val_loss {best:.4g}" in row and "1e-05" not in row


def test_a_plans_best_is_its_confirmed_winners_mean(tmp_path):
    """A plan's 'best' was one confirm seed's validation loss, not the answer the plan gave; so was its confirm
    stage's row (its luckiest seed, of a configuration that lost: found by a review)."""
    import json
    import re

    from analysis.dashboard import index_page

    shutil.copytree(DATA / "seeds-digits", tmp_path / "plan" / "confirm")
    summary = {"metric": "test_acc", "winner_mean": 0.97278, "seeds": [0, 1, 2]}
    stages = {"confirm": {"kind": "confirm", "status": "completed", "experiments": ["confirm"], "summary": summary}}
    (tmp_path / "plan" / "plan.json").write_text(json.dumps({"plan": "p", "status": "completed", "stages": stages}))
    server = make_server(tmp_path, port=0)
    try:
        rows = re.findall(r"<tr.*?</tr>", index_page(server))
    finally:
        server.server_close()
    for href in ("/exp/plan", "/exp/plan/confirm"):
        row = next(r for r in rows if f'href="{href}"' in r)
        assert "test_acc 0.9728 (confirmed, mean of 3 seeds)" in row and "best_val_loss" not in row, row
