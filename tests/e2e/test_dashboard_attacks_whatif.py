"""The dashboard's What-if and Runs parts, attacked (#16): a gateway started from a config file whose provider key
comes from the environment, a `ui.whatif_data` folder with a symlink out, and run stores that are not what they
should be. Holes are `xfail(strict=True, reason="HOLE: ...")`."""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from modelyard.config.loader import load_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer

MASTER = "sk-master-whatif-attack-0123456789"
#: The provider's key, as operators pass it: through the environment (`${...}` in the config file).
SECRET_ENV = "MODELYARD_DASH_ATTACK_PROVIDER_KEY"
SECRET = "sk-provider-from-env-5f4e3d2c1b0a"
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
DANGEROUS = ("<script>alert", "<img src=x onerror")
COOKIE = "modelyard_ui"
LOGIN_COOKIE = "modelyard_ui_login"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=7, instant=True) as server:
        yield server


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, sim: SimServer) -> Path:
    root = tmp_path_factory.mktemp("whatif-attack")
    data = root / "data"
    data.mkdir()
    with (data / "traffic.jsonl").open("w") as fh:
        for prompt in ("one", "two", "three"):
            fh.write(json.dumps({"prompt": prompt, "model": "sim-small", "score": 1.0, "cost": 0.001}) + "\n")
    (root / "private.jsonl").write_text(json.dumps({"prompt": "private", "model": "sim-small", "score": 1}) + "\n")
    (data / "escape.jsonl").symlink_to(root / "private.jsonl")
    (data / "etc.jsonl").symlink_to("/etc/passwd")
    (data / "sub").mkdir()
    (data / "sub" / "up.jsonl").symlink_to("../../private.jsonl")
    (root / "not-sqlite.db").write_text("this is not a database\n" * 100)
    (root / "a-folder.db").mkdir()
    (root / "modelyard.yaml").write_text(
        f"""
deployments:
  - {{name: small, provider: openai, model: sim-small, api_base: "{sim.openai_base}", api_key: "${{{SECRET_ENV}}}",
      price: {{input: 1, output: 1}}}}
models:
  chat: {{candidates: [small]}}
access:
  master_key: {MASTER}
spend:
  store: {root / "modelyard.db"}
  flush_interval_s: 0.05
ui:
  whatif_data: [data]
  runs_store: not-sqlite.db
"""
    )
    return root


@pytest.fixture(scope="module")
def url(folder: Path) -> Iterator[str]:
    os.environ[SECRET_ENV] = SECRET
    try:
        with BackgroundServer(create_app(load_config(folder / "modelyard.yaml"))) as server:
            yield server.url
    finally:
        os.environ.pop(SECRET_ENV, None)


def admin(url: str, method: str, path: str, key: str | None = MASTER, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, url + path, headers=headers, timeout=60, **kwargs)


def whatif(url: str, key: str | None = MASTER, **body: Any) -> httpx.Response:
    return admin(url, "POST", "/admin/whatif", key, json={"data": "traffic.jsonl", **body})


def login(url: str, key: str = MASTER) -> str:
    page = httpx.get(url + "/ui/login", timeout=30)
    match = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert match is not None
    cookie = page.headers["set-cookie"].split(";", 1)[0]
    answer = httpx.post(
        url + "/ui/login",
        data={"key": key, "login_token": match.group(1)},
        headers={"cookie": cookie},
        timeout=30,
    )
    assert answer.status_code == 303, answer.text
    return answer.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]


def page(url: str, session: str, method: str = "GET", path: str = "/ui/whatif", **kwargs: Any) -> httpx.Response:
    headers = {"cookie": f"{COOKIE}={session}", **kwargs.pop("headers", {})}
    return httpx.request(method, url + path, headers=headers, timeout=60, **kwargs)


def csrf_of(url: str, session: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page(url, session).text)
    assert match is not None
    return match.group(1)


def role_admin(url: str) -> str:
    made = admin(url, "POST", "/admin/keys", json={"name": "ops", "metadata": {"role": "admin"}})
    assert made.status_code == 200, made.text
    return str(made.json()["key"])


# --------------------------------------------------------------------------- which files


@pytest.mark.parametrize(
    "name",
    [
        "../modelyard.yaml",
        "../private.jsonl",
        "/etc/passwd",
        "escape.jsonl",  # a symlink out of the folder
        "etc.jsonl",
        "sub/up.jsonl",
        "sub/../../private.jsonl",
        "./traffic.jsonl",
        "data/traffic.jsonl",
        "traffic.jsonl\x00.csv",
        "%2e%2e/private.jsonl",
        "~/.modelyard/runs.db",
        "",
        "a" * 5000,
    ],
)
def test_only_listed_files_inside_the_folders_can_be_replayed(url: str, name: str) -> None:
    answer = whatif(url, data=name, policy="candidates: [small]")
    assert answer.status_code == 400, (name, answer.status_code, answer.text[:300])
    assert answer.json()["error"]["param"] == "data"
    listed = admin(url, "GET", "/admin/whatif").json()["data"]
    assert listed == ["traffic.jsonl"]


def test_a_data_value_of_another_type_is_a_400(url: str) -> None:
    for value in (None, 1, ["traffic.jsonl"], {"path": "/etc/passwd"}):
        answer = whatif(url, data=value, policy="candidates: [small]")
        assert answer.status_code == 400, (value, answer.text[:200])


def test_a_symlink_loop_in_the_data_folder_costs_only_itself(folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "traffic.jsonl").write_text((folder / "data" / "traffic.jsonl").read_text())
    (data / "loop.jsonl").symlink_to(data / "loop.jsonl")
    config_path = tmp_path / "modelyard.yaml"
    config_path.write_text((folder / "modelyard.yaml").read_text().replace(str(folder / "modelyard.db"), "x.db"))
    with BackgroundServer(create_app(load_config(config_path, env={SECRET_ENV: SECRET}))) as server:
        listed = admin(server.url, "GET", "/admin/whatif")
        assert listed.status_code == 200, listed.text[:300]
        assert listed.json()["data"] == ["traffic.jsonl"]
        assert whatif(server.url, data="loop.jsonl", policy="candidates: [small]").status_code == 400


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    "policy",
    [
        f'candidates: ["${{{SECRET_ENV}}}"]',
        f'strategy: "${{{SECRET_ENV}}}"\ncandidates: [small]',
        f'candidates: [small]\nrules: [{{use: ["x${{{SECRET_ENV}}}"]}}]',
    ],
)
def test_a_policy_cannot_read_the_gateways_environment(url: str, policy: str) -> None:
    answer = whatif(url, role_admin(url), policy=policy)
    assert answer.status_code == 400, answer.text[:300]
    assert SECRET not in answer.text
    session = login(url)
    shown = page(url, session, "POST", data={"csrf": csrf_of(url, session), "data": "traffic.jsonl", "policy": policy})
    assert SECRET not in shown.text


@pytest.mark.parametrize(
    "policy",
    [
        f'candidates: ["\\u0024{{{SECRET_ENV}}}"]',
        f'candidates: ["\\x24{{{SECRET_ENV}}}"]',
        f'candidates: ["$\\x7b{SECRET_ENV}}}"]',
        f'candidates: ["$\\\n  {{{SECRET_ENV}}}"]',
        f'strategy: "\\U00000024{{{SECRET_ENV}}}"\ncandidates: [small]',
    ],
    ids=["u0024", "x24", "x7b", "escaped-newline", "U00000024"],
)
def test_a_policy_cannot_build_an_env_reference_with_yaml_escapes(url: str, policy: str) -> None:
    assert "${" not in policy  # the text itself holds no reference: only the parsed value does
    answer = whatif(url, role_admin(url), policy=policy)
    assert answer.status_code == 400, answer.text[:300]
    assert SECRET not in answer.text, answer.text[:300]


def test_the_environment_secret_is_set_where_the_gateway_reads_it(url: str) -> None:
    """The premise of the test above: the secret is in the gateway's environment (it loaded the config)."""
    assert os.environ.get(SECRET_ENV) == SECRET
    for path in ("/admin/whatif", "/admin/whatif?from=chat", "/admin/deployments"):
        answer = admin(url, "GET", path)
        assert answer.status_code == 200 and SECRET not in answer.text, path


BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["candidates: [small]", "tags: *i"]
)


@pytest.mark.parametrize(
    ("policy", "words"),
    [
        (BILLION_LAUGHS, "anchors"),
        ("candidates: [small]\n<<: {strategy: cost}", "merge"),
        ("!!python/object/apply:os.system ['touch /tmp/modelyard-pwned']", "YAML"),
        ("candidates: !!python/name:os.system", "YAML"),
        ("candidates: [nowhere]", "unknown deployment"),  # a deployment the config does not have
        ("candidates: [small]\nfallbacks: [not-a-model]", "not-a-model"),
        ("- a list", "mapping"),
        ("just text", "mapping"),
        ("candidates: [small]\n" + "x" * 40_000, "32768"),
        ("candidates: " + "[" * 300 + "]" * 300, "nested"),
    ],
)
def test_a_hostile_policy_is_a_quick_400(url: str, policy: str, words: str) -> None:
    started = time.monotonic()
    answer = whatif(url, policy=policy)
    took = time.monotonic() - started
    assert answer.status_code == 400, answer.text[:300]
    assert words in answer.json()["error"]["message"], answer.text[:300]
    assert took < 5.0, took
    assert not Path("/tmp/modelyard-pwned").exists()


def test_a_policy_with_a_complex_key_is_a_400(url: str) -> None:
    for policy in ("? [a, b]\n: 1\ncandidates: [small]", "candidates: [small]\n? {a: 1}\n: 2"):
        answer = whatif(url, policy=policy)
        assert answer.status_code == 400, answer.text[:300]


def test_a_deeply_nested_policy_is_refused_quickly(url: str) -> None:
    started = time.monotonic()
    answer = whatif(url, policy="candidates: " + "[" * 8000 + "]" * 8000)
    assert answer.status_code == 400
    assert time.monotonic() - started < 2.0


def test_the_gateway_answers_while_a_policy_is_checked(url: str) -> None:
    """Checking (even a slow, hostile) policy happens off the event loop: other requests do not wait."""
    done: dict[str, float] = {}

    def slow() -> None:
        started = time.monotonic()
        whatif(url, policy="candidates: " + "[" * 8000 + "]" * 8000)
        done["slow"] = time.monotonic() - started

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert httpx.get(url + "/ui/login", timeout=30).status_code == 200
    assert time.monotonic() - started < 2.0
    thread.join(timeout=120)


def test_a_policy_echoed_in_an_error_is_text_on_the_page(url: str) -> None:
    session = login(url)
    csrf = csrf_of(url, session)
    for policy in (f'"{XSS}": 1\ncandidates: [small]', f"candidates: ['{XSS}']", f"strategy: '{XSS}'\ncandidates: []"):
        shown = page(url, session, "POST", data={"csrf": csrf, "data": "traffic.jsonl", "policy": policy})
        assert shown.status_code == 400, shown.text[:300]
        assert not [d for d in DANGEROUS if d in shown.text], shown.text
        assert "&lt;script&gt;" in shown.text
    for data in (XSS, f"../{XSS}"):
        shown = page(url, session, "POST", data={"csrf": csrf, "data": data, "policy": "candidates: [small]"})
        assert shown.status_code == 400 and not [d for d in DANGEROUS if d in shown.text]
    asked = page(url, session, params={"from": XSS})
    assert asked.status_code == 400 and not [d for d in DANGEROUS if d in asked.text]


def test_what_if_needs_an_admin(url: str) -> None:
    plain = admin(url, "POST", "/admin/keys", json={"name": "plain"}).json()["key"]
    for key in (plain, None):
        assert admin(url, "GET", "/admin/whatif", key).status_code == 401
        assert whatif(url, key, policy="candidates: [small]").status_code == 401


# --------------------------------------------------------------------------- odd run stores and run ids


def test_a_runs_store_that_is_not_sqlite_is_a_503_not_a_500(url: str) -> None:
    answer = admin(url, "GET", "/admin/runs")
    assert answer.status_code == 503, answer.text[:300]
    assert answer.json()["error"]["code"] == "runs_store_unavailable"
    one = admin(url, "GET", "/admin/runs/some-run")
    assert one.status_code in (404, 503), one.text[:300]
    session = login(url)
    shown = page(url, session, path="/ui/runs")
    assert shown.status_code == 503 and "Internal error" not in shown.text


@pytest.mark.parametrize(
    "store",
    ["a-folder.db", "missing/deeper/runs.db", "/etc/passwd", "/dev/zero", "/proc/self/environ"],
)
def test_run_stores_that_are_folders_missing_or_not_files(folder: Path, store: str) -> None:
    text = (folder / "modelyard.yaml").read_text().replace("runs_store: not-sqlite.db", f"runs_store: {store}")
    config_path = folder / f"odd-{abs(hash(store))}.yaml"
    config_path.write_text(text)
    with BackgroundServer(create_app(load_config(config_path, env={SECRET_ENV: SECRET}))) as server:
        started = time.monotonic()
        answer = admin(server.url, "GET", "/admin/runs")
        assert time.monotonic() - started < 10
        assert answer.status_code in (200, 503), (store, answer.status_code, answer.text[:300])
        if answer.status_code == 200:
            assert answer.json()["data"] == []
        assert "root:" not in answer.text and SECRET not in answer.text
    assert not (folder / "missing").exists(), "the gateway must never create the run store (read-only)"


@pytest.mark.parametrize(
    "path",
    [
        "/admin/runs/..",
        "/admin/runs/.",
        "/admin/runs/..%2f..%2fmodelyard.yaml",
        "/admin/runs/%2e%2e",
        "/admin/runs/a%00b",
        "/admin/runs/" + "a" * 5000,
        "/admin/runs/a'b\"c<d>",
        "/ui/runs/..",
        "/ui/runs/..%2fmodelyard.yaml",
        "/ui/runs/%3Cscript%3E",
    ],
)
def test_odd_run_ids_are_4xx(url: str, path: str) -> None:
    session = login(url)
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)  # sends the path as written
    try:
        connection.request("GET", path, headers={"authorization": f"Bearer {MASTER}", "cookie": f"{COOKIE}={session}"})
        answer = connection.getresponse()
        status, body = answer.status, answer.read()
    finally:
        connection.close()
    assert 400 <= status < 500 or status == 503, (path, status, body[:300])
    assert b"<script>" not in body


def test_a_unicode_digit_limit_on_the_what_if_form_is_a_400(url: str) -> None:
    session = login(url)
    form = {"csrf": csrf_of(url, session), "data": "traffic.jsonl", "policy": "candidates: [small]", "limit": "\u00b2"}
    assert page(url, session, "POST", data=form).status_code == 400


def test_the_page_and_the_api_share_one_replay_slot(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay started through the API makes the page's a 429 (and the other way round): one child at a time."""
    from modelyard.server import admin_whatif

    release = threading.Event()
    real = admin_whatif._replay

    async def held(config: Any, ask: Any) -> dict[str, Any]:
        import asyncio

        await asyncio.to_thread(release.wait, 90)
        return await real(config, ask)

    monkeypatch.setattr(admin_whatif, "_replay", held)
    session = login(url)
    form = {"csrf": csrf_of(url, session), "data": "traffic.jsonl", "policy": "candidates: [small]", "limit": "3"}
    results: dict[str, int] = {}
    first = threading.Thread(target=lambda: results.update(api=whatif(url, policy="candidates: [small]").status_code))
    first.start()
    try:
        time.sleep(0.5)
        assert page(url, session, "POST", data=form).status_code == 429
        assert whatif(url, policy="candidates: [small]").status_code == 429
    finally:
        release.set()
        first.join(timeout=90)
    assert results["api"] == 200


def _hostile_runs(store: Path) -> list[str]:
    """Runs whose outputs, inputs, notes and ids are markup (a run store is another process's data)."""
    from modelyard.workflows import SqliteStore
    from modelyard.workflows.checkpoint import RunHeader
    from modelyard.workflows.records import StepRecord, StepState

    attribute = '" onmouseover="alert(3)" x="'
    ids = ["hostile-output", f"run{attribute}", f"run<{XSS}>"]
    runs = SqliteStore(store)
    try:
        now = time.time()
        for run_id in ids:
            header = RunHeader(run_id, f"wf {attribute}", f"{XSS}.yaml", XSS, {"topic": XSS}, now - 10, {"a": []})
            runs.create_run(header)
            runs.append(run_id, "run_started", None, {"pid": -1, "host": XSS})
            done = StepRecord("a", "a", "model", StepState.SUCCEEDED, output={"text": XSS, XSS: attribute}, model="m")
            done.note = XSS
            done.started_at, done.finished_at = now - 9, now - 8
            runs.append(run_id, "step_finished", "a", {"record": done.to_dict()})
            runs.append(run_id, "run_finished", None, {"status": "succeeded", "outputs": {"out": XSS}})
    finally:
        runs.close()
    return ids


def test_a_hostile_run_store_shows_as_text(folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    ids = _hostile_runs(store)
    text = (folder / "modelyard.yaml").read_text().replace("runs_store: not-sqlite.db", f"runs_store: {store}")
    config_path = tmp_path / "modelyard.yaml"
    config_path.write_text(text.replace(str(folder / "modelyard.db"), str(tmp_path / "spend.db")))
    with BackgroundServer(create_app(load_config(config_path, env={SECRET_ENV: SECRET}))) as server:
        session = login(server.url)
        listed = page(server.url, session, path="/ui/runs")
        assert listed.status_code == 200
        shown = [listed, page(server.url, session, path=f"/ui/runs/{ids[0]}")]
        assert shown[1].status_code == 200, shown[1].text[:300]
        for answer in shown:
            assert not [d for d in (*DANGEROUS, '" onmouseover="alert') if d in answer.text], answer.text
        assert "&lt;script&gt;" in shown[1].text  # the output is there, as text
        for run_id in ids[1:]:  # ids no page may open are listed, never a way in
            assert admin(server.url, "GET", f"/admin/runs/{quote(run_id, safe='')}").status_code in (400, 404)


def test_one_unreadable_run_costs_only_itself(folder: Path, tmp_path: Path) -> None:
    from modelyard.workflows import SqliteStore
    from modelyard.workflows.checkpoint import RunHeader

    store = tmp_path / "runs.db"
    _hostile_runs(store)
    runs = SqliteStore(store)
    try:
        runs.create_run(RunHeader("from-the-future", "wf", "x.yaml", "", {}, time.time(), {}))
        runs.append("from-the-future", "run_finished", None, {"status": "a-status-of-a-later-version"})
    finally:
        runs.close()
    text = (folder / "modelyard.yaml").read_text().replace("runs_store: not-sqlite.db", f"runs_store: {store}")
    config_path = tmp_path / "modelyard.yaml"
    config_path.write_text(text.replace(str(folder / "modelyard.db"), str(tmp_path / "spend.db")))
    with BackgroundServer(create_app(load_config(config_path, env={SECRET_ENV: SECRET}))) as server:
        listed = admin(server.url, "GET", "/admin/runs")
        assert listed.status_code == 200, listed.text[:300]
        assert "hostile-output" in {run["run_id"] for run in listed.json()["data"]}


@pytest.mark.parametrize("name", ["--help", "-h", "--"])
def test_a_policy_name_that_looks_like_an_option_is_only_a_name(url: str, name: str) -> None:
    """The name reaches the replay's command line: it must stay a value there, never become an option."""
    answer = whatif(url, policy="candidates: [small]", name=name, limit=3)
    assert answer.status_code == 200, answer.text[:300]
    assert [p["policy"] for p in answer.json()["policies"]] == [name]
