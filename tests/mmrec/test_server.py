"""mmrec serve: every route answers what the Python API returns; bad requests get 400 / 404."""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mmrec.cli import main
from mmrec.config import TrainConfig
from mmrec.item_index import ItemIndex
from mmrec.pipeline import fit
from mmrec.recommender import Recommender
from mmrec.server import RecommenderServer
from tests.mmrec.conftest import write_planted

FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, epochs=3, patience=3, reg=1e-4, seed=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve")
    inter, feats = write_planted(d)
    fit(inter, features={"content": feats}, out=d / "model", config=TrainConfig(**FAST), split="random",
        show_progress=False)
    return d / "model"


@contextmanager
def serving(rec):
    """The server on a free port, in a thread; yields its base URL."""
    server = RecommenderServer(rec, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def served(model_dir):
    rec = Recommender.load(model_dir, show_progress=False)
    with serving(rec) as url:
        yield rec, url


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes on a new connection and read until the server closes it: (head, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(request)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def dicts(results) -> list[dict]:
    return json.loads(json.dumps([r.to_dict() for r in results]))  # as the server encodes them


def test_the_access_log_escapes_control_characters_and_shows_utf8_as_sent(served, caplog):
    # Logged raw, an ESC sequence in a request coloured or overwrote the operator's terminal, and an
    # unescaped UTF-8 id read as Latin-1 ("cafÃ©").
    _, url = served
    port = int(url.rsplit(":", 1)[1])
    with caplog.at_level(logging.INFO, logger="mmrec.server"):
        exchange(port, b"GET /health?\x1b[31mRED HTTP/1.1\r\nConnection: close\r\n\r\n")
        exchange(port, "GET /item?item=café\x08 HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
        exchange(port, b"BREW /\x1b[2J HTTP/1.1\r\n\r\n")
    lines = [r.getMessage() for r in caplog.records]
    assert any('"GET /health?\\x1b[31mRED" 400' in line for line in lines), lines
    assert any('"GET /item?item=café\\x08" 404' in line for line in lines), lines
    assert any('"BREW /\\x1b[2J HTTP/1.1" 501' in line for line in lines), lines
    assert not any("\x1b" in line or "\x08" in line for line in lines)


def test_an_http_1_0_client_asking_for_keep_alive_is_told_its_connection_stays_open(served):
    # The connection was kept but the answer did not say so: such a client opens a new one each
    # time, leaving the old one's thread waiting a minute.
    _, url = served
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as raw:
        stream = raw.makefile("rb")
        for _ in range(2):
            raw.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            head = list(iter(lambda: stream.readline().strip(), b""))  # the header lines, to the blank one
            assert head[0] == b"HTTP/1.1 200 OK" and b"Connection: keep-alive" in head, head
            length = int(next(h for h in head if h.startswith(b"Content-Length")).split(b":")[1])
            assert json.loads(stream.read(length))["status"] == "ok"
    head, _ = exchange(int(url.rsplit(":", 1)[1]), b"GET /health HTTP/1.0\r\n\r\n")  # not asked: closed
    assert b"Connection: close" in head and b"keep-alive" not in head


def test_every_route_answers_what_the_python_api_returns(served):
    rec, url = served
    assert get(f"{url}/health") == (200, {"status": "ok", "kind": "trained", "items": 32, "users": 48,
                                          "modalities": ["content"]})
    cases = [
        ("/recommend?user=u3&k=5", rec.recommend("u3", 5)),
        ("/recommend?user=u3&k=4&explain=1&explain_items=2", rec.recommend("u3", 4, explain=True, history=2)),
        ("/recommend?user=u3&k=4&diversity=0.5", rec.recommend("u3", 4, diversity=0.5)),
        ("/recommend?user=u3&k=40&include_known=true", rec.recommend("u3", 40, exclude_known=False)),
        ("/history?item=0&item=4&k=5", rec.recommend_history([0, 4], 5)),
        ("/history?item=0&item=4&k=5&method=mean", rec.recommend_history([0, 4], 5, method="mean")),
        ("/history?user=u3&item=8&k=5", rec.recommend_history([8], 5, user="u3")),
        ("/history?user=u3&k=5&explain", rec.recommend_history([], 5, user="u3", explain=True)),
        ("/similar?item=3&k=6", rec.similar(3, 6)),
        ("/similar?item=3&k=6&by=cosine&explain=yes", rec.similar(3, 6, by="cosine", explain=True)),
        ("/explain?item=3&k=4", [rec.explain(3, 4)]),
        ("/explain?item=3&item=0", [rec.explain(3), rec.explain(0)]),
    ]
    for path, want in cases:
        status, body = get(url + path)
        assert status == 200, (path, body)
        assert body == {"results": dicts(want)} | ({"ignored": []} if path.startswith("/history") else {}), path
    # exclude / only ids not in the index are left out, and the answer names them (a client sees no log).
    filtered = [
        ("/recommend?user=u3&k=5&exclude=7&exclude=11", rec.recommend("u3", 5, exclude=[7, 11]),
         {"ignored_exclude": []}),
        ("/history?item=0&k=5&exclude=4", rec.recommend_history([0], 5, exclude=[4]),
         {"ignored": [], "ignored_exclude": []}),
        ("/similar?item=3&k=6&exclude=7&exclude=nope&exclude=nope", rec.similar(3, 6, exclude=[7]),
         {"ignored_exclude": ["nope"]}),
        ("/similar?item=3&k=3&only=5&only=9&only=40&exclude=x", rec.similar(3, 3, only=[5, 9]),
         {"ignored_exclude": ["x"], "ignored_only": ["40"]}),
        ("/recommend?user=u3&k=2&only=5&only=9&only=nope&only=6", rec.recommend("u3", 2, only=[5, 9, 6]),
         {"ignored_only": ["nope"]}),
    ]
    for path, want, ignored in filtered:
        assert get(url + path) == (200, {"results": dicts(want), **ignored}), path
    # History items not in the index are left out, and the answer says which (a client sees no log).
    assert get(f"{url}/history?item=0&item=999&item=x&item=999&k=5") == (  # each named once, as ignored_exclude does
        200, {"results": dicts(rec.recommend_history([0], 5)), "ignored": ["999", "x"]})
    assert len(get(f"{url}/recommend?user=u3&k=40&include_known=true")[1]["results"]) == 32


def test_bad_requests_are_refused_with_the_reason(served):
    rec, url = served
    cases = [
        ("/recommend?user=nobody", 404, "user 'nobody' is not known to this model (48 users)"),
        ("/similar?item=999", 404, "item '999' is not in this index (32 items)"),
        ("/history?item=999", 404, "history item '999' is not in this index (32 items)"),
        ("/nowhere", 404, "no route '/nowhere'; routes: /health, /recommend, /history, /similar, /search, /item, "
                                  "/explain"),
        ("/explain?item=3&item=77", 404, "item '77' is not in this index (32 items)"),
        ("/explain?k=2", 400, "/explain: give one or more 'item' parameters"),
        ("/explain?item=3&k=0", 400, "/explain: 'k' must be at least 1, got 0"),
        ("/item?item=3&item=77", 404, "item '77' is not in this index (32 items)"),
        ("/item", 400, "/item: give one or more 'item' parameters"),
        ("/item?item=3&k=2", 400, "/item: unknown parameter(s) 'k'; this route takes item"),
        ("/recommend", 400, "/recommend: missing parameter 'user'"),
        ("/recommend?user=u1&user=u2", 400, "/recommend: 'user' given 2 times, expected once"),
        ("/recommend?user=u1&k=0", 400, "/recommend: 'k' must be at least 1, got 0"),
        ("/recommend?user=u1&k=ten", 400, "/recommend: 'k' must be an integer, got 'ten'"),
        ("/recommend?user=u1&k=1_0", 400, "/recommend: 'k' must be an integer, got '1_0'"),  # int() took these
        ("/recommend?user=u1&k=%D9%A3", 400, "/recommend: 'k' must be an integer, got '\u0663'"),
        ("/recommend?user=u1&k=%201", 400, "/recommend: 'k' must be an integer, got ' 1'"),
        ("/recommend?user=u1&k=-" + "0" * 20 + "5", 400, "/recommend: 'k' must be at least 1"),  # (it said too large)
        ("/recommend?user=u1&explain=maybe", 400, "/recommend: 'explain' must be 1 or 0 (true / false), got 'maybe'"),
        ("/recommend?user=u1&diversity=x", 400, "/recommend: 'diversity' must be a number, got 'x'"),
        ("/recommend?user=u1&diversity=1.5", 400, "diversity weight must lie in [0, 1], got 1.5"),
        ("/recommend?user=u1&kk=3", 400, "/recommend: unknown parameter(s) 'kk'; this route takes user, k, "
                                         "include_known, explain, explain_items, diversity"),
        ("/health?verbose=1", 400, "/health: unknown parameter(s) 'verbose'; this route takes no parameters"),
        ("/history", 400, "/history: give one or more 'item' parameters"),
        ("/history?item=0&method=magic", 400, "method must be 'auto', 'fold-in' or 'mean', got 'magic'"),
        ("/similar?item=3&by=dot", 400, "by must be 'index' or 'cosine', got 'dot'"),
        ("/search?text=space", 400, "this index has no text modality"),
        ("/search?text=space&by=cosine", 400, "by must be 'index' or 'content', got 'cosine'"),
        ("/recommend?user=%ff", 400, "the query string is not UTF-8"),
        ("/recommend?user=u1&explain_items=2", 400, "'explain_items' sets how many history items 'explain' names"),
        ("/recommend?user=u1&explain=1&explain_items=0", 400, "/recommend: 'explain_items' must be at least 1, got 0"),
        ("/history?item=0&explain_items=2&explain=0", 400, "/history: 'explain_items' sets how many history items"),
        ("/history?item=", 400, "/history: 'item' is empty"),
        ("/similar?item=%20", 400, "/similar: 'item' is empty"),
        ("/recommend?user=", 400, "/recommend: 'user' is empty"),
    ]
    for path, status, message in cases:
        got_status, body = get(url + path)
        assert got_status == status and message in body["error"], (path, got_status, body)
    assert len(get(url + "/recommend?user=u3&k=" + "0" * 20 + "2")[1]["results"]) == 2  # leading zeros: the value is 2
    assert len(get(url + "/recommend?user=u3&k=" + "0" * 5000 + "2")[1]["results"]) == 2  # (a 500: int() of 5001 digits)
    # past 18 digits, every item, as the CLI's -k of that many digits (int() refused 5,000 digits: a 500; then a 400)
    everything = get(url + "/recommend?user=u3&k=" + "9" * 5000)
    assert everything == (200, {"results": dicts(rec.recommend("u3", 10**18))}) and len(everything[1]["results"]) > 10


def test_a_stopping_server_waits_for_the_answers_being_written_and_refuses_new_ones(model_dir):
    # Ctrl-C under load aborted the process ("terminate called without an active exception"): it exited
    # while daemon handler threads were inside torch / FAISS
    rec = Recommender.load(model_dir, show_progress=False)
    server = RecommenderServer(rec, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert server.begin_request()  # a request being answered
        started = time.monotonic()
        assert server.drain(timeout=0.3) == 1 and time.monotonic() - started >= 0.3  # waited for it, in vain
        assert not server.begin_request()
        assert get(f"{url}/health") == (503, {"error": "the server is stopping"})
        finisher = threading.Timer(0.2, server.end_request)
        finisher.start()
        assert server.drain(timeout=30) == 0  # it ended: nothing left
        finisher.join()
    finally:
        server.shutdown()
        server.server_close()


def test_other_methods_get_a_json_405_and_a_body_does_not_poison_the_connection(served):
    rec, url = served
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for method in ("POST", "PUT", "DELETE", "TRACE"):
        conn.request(method, "/recommend?user=u3", body=b'{"user": "u3"}')
        response = conn.getresponse()
        assert response.status == 405 and response.headers["Allow"] == "GET, HEAD"
        assert json.loads(response.read()) == {"error": f"{method} is not served: every route is a GET"}
    # HEAD is GET's status and headers without the body (it was a 405; health checkers send it)
    for path, status in (("/health", 200), ("/recommend?user=u3&k=2", 200), ("/recommend?user=nobody", 404)):
        conn.request("GET", path)
        got = conn.getresponse()
        body = got.read()
        conn.request("HEAD", path)
        response = conn.getresponse()
        assert response.status == got.status == status and response.read() == b""
        assert response.headers["Content-Length"] == got.headers["Content-Length"] == str(len(body))
    # A GET with a body, then another request on the same kept-alive connection.
    conn.request("GET", "/recommend?user=u3&k=2", body=b"hello")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read()) == {"results": dicts(rec.recommend("u3", 2))}
    conn.request("GET", "/health")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    conn.close()
    # A chunked body has no length to skip: answered, then the connection closes (not a mangled next request).
    head, body = exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
                                b"0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head and json.loads(body)["status"] == "ok"
    # What the standard library refuses itself is answered in JSON too.
    head, body = exchange(port, b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and json.loads(body) == {"error": "Line too long"}
    # CONNECT is an HTTP method too (405); one HTTP does not define is not implemented (501).
    head, body = exchange(port, b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405") and b"Allow: GET" in head
    assert json.loads(body) == {"error": "CONNECT is not served: every route is a GET"}
    head, body = exchange(port, b"BREW /pot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501") and json.loads(body) == {"error": "Unsupported method ('BREW')"}
    # So is a request line it cannot parse: with a status line and headers, not a bare HTTP/0.9 body.
    head, body = exchange(port, b"NONSENSE\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": "Bad request syntax ('NONSENSE')"}
    # A name sent unescaped arrives as its UTF-8 bytes (curl does so), read back as such; bytes
    # that are no UTF-8 are a 400, and a body claimed huge is not read (nor allocated).
    for raw_line, status, error in ((b"GET /similar?item=caf\xc3\xa9 HTTP/1.1", b"404", "item 'caf\u00e9' is not"),
                                    (b"GET /similar?item=caf\xe9 HTTP/1.1", b"400", "the request line is not UTF-8")):
        head, body = exchange(port, raw_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status) and json.loads(body)["error"].startswith(error)
    head, body = exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head and json.loads(body)["status"] == "ok"


def test_an_ipv6_address_is_served_where_the_machine_has_one(model_dir):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = RecommenderServer(Recommender.load(model_dir, show_progress=False), "::1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert get(f"http://[::1]:{server.server_port}/health")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_an_unexpected_failure_is_a_500_and_the_server_goes_on(model_dir, monkeypatch):
    rec = Recommender.load(model_dir, show_progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(rec, "similar", broken)
    with serving(rec) as url:
        assert get(f"{url}/similar?item=3") == (500, {"error": "internal error: RuntimeError: disk on fire"})
        assert get(f"{url}/recommend?user=u3&k=3") == (200, {"results": dicts(rec.recommend("u3", 3))})


def test_a_burst_of_new_connections_waits_in_a_queue_of_the_systems_size(model_dir):
    server = RecommenderServer(Recommender.load(model_dir, show_progress=False), "127.0.0.1", 0)
    try:
        assert server.request_queue_size == socket.SOMAXCONN > 5  # the standard library's 5 drops a burst of clients
    finally:
        server.server_close()


def test_concurrent_requests_each_get_their_own_answer(served):
    rec, url = served
    users = [f"u{i}" for i in range(48)] * 3
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda u: get(f"{url}/history?user={u}&item=1&k=4"), users))
    assert got == [(200, {"results": dicts(rec.recommend_history([1], 4, user=u)), "ignored": []}) for u in users]


def test_a_content_index_serves_similar_and_history_and_refuses_recommend(tmp_path):
    vecs = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    records = [{"title": f"T{n}", "price": f"{n}.0" if n % 3 else ""} for n in range(12)]
    records[4]["item_id"] = "shown as catalog.item_id"  # a catalog column named like the answer's own key
    ItemIndex.from_features([f"i{n}" for n in range(12)], {"image": vecs}, records=records, factory="Flat",
                            show_progress=False).save(tmp_path / "idx")
    rec = Recommender.load(tmp_path / "idx", show_progress=False)
    with serving(rec) as url:
        assert get(f"{url}/health")[1] == {"status": "ok", "kind": "content", "items": 12, "users": 0,
                                           "modalities": ["image"]}
        assert get(f"{url}/similar?item=i2&k=3") == (200, {"results": dicts(rec.similar("i2", 3))})
        assert get(f"{url}/history?item=i2&item=i5&k=3") == (200, {"results": dicts(rec.recommend_history(["i2", "i5"], 3)),
                                                                  "ignored": []})
        status, body = get(f"{url}/recommend?user=u1")
        assert status == 400 and "holds a content index, not a trained model" in body["error"]
        # /item: the stored display fields, several at once, in the order asked
        assert get(f"{url}/item?item=i4&item=i0") == (200, {"results": [
            {"item_id": "i4", "title": "T4", "price": "4.0", "catalog.item_id": "shown as catalog.item_id"},
            {"item_id": "i0", "title": "T0", "price": ""}]})
        # where: = compares numbers as numbers, an empty value is the items without the field
        assert [r["item_id"] for r in get(f"{url}/similar?item=i0&k=12&where=price%3D4")[1]["results"]] == ["i4"]
        assert sorted(r["item_id"] for r in get(f"{url}/similar?item=i0&k=12&where=price%3D")[1]["results"]) == \
            ["i3", "i6", "i9"]


def test_the_serve_command_listens_answers_and_stops_on_ctrl_c(model_dir):
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # Ctrl-C as a terminal sends it: a run started in the background (`.ci/run &`) ignores SIGINT,
    # which the server would inherit (and Python then raises no KeyboardInterrupt). -X faulthandler:
    # should it not stop, SIGABRT below prints where each thread is.
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "mmrec.cli", "serve", "--index",
                             str(model_dir), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
        assert match and "trained model, 32 items, 48 users" in line, line + proc.stderr.read()
        rec = Recommender.load(model_dir, show_progress=False)
        assert get(f"{match[1]}/recommend?user=u5&k=3") == (200, {"results": dicts(rec.recommend("u5", 3))})
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)  # (2 s here)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            pytest.fail("serve did not stop on Ctrl-C within 60 s; its threads:\n" + proc.communicate(timeout=30)[1])
        log = proc.stderr.read()
        assert code == 0, log
        # one access-log line a request, with its time and client; then the stop is said
        assert re.search(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO mmrec.server: 127\.0\.0\.1 '
                         r'"GET /recommend\?user=u5&k=3" 200 ', log, re.M), log
        assert log.rstrip().endswith("INFO mmrec: stopped"), log
    finally:
        proc.kill()
        proc.wait()
    # SIGTERM (docker stop, systemd) stops as Ctrl-C does: it killed the process at once (exit 143)
    proc = subprocess.Popen([sys.executable, "-m", "mmrec.cli", "serve", "--index", str(model_dir), "--port", "0",
                             "--no-warm"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "at http://127.0.0.1:" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        code, log = proc.wait(timeout=60), proc.stderr.read()
        assert code == 0 and log.rstrip().endswith("INFO mmrec: stopped"), log
    finally:
        proc.kill()
        proc.wait()
    with socket.socket() as busy:  # a port another program holds
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run([sys.executable, "-m", "mmrec.cli", "serve", "--index", str(model_dir), "--port",
                                str(port), "-q"], capture_output=True, text=True, env=env, timeout=120)
    assert taken.returncode == 1 and taken.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--index", str(model_dir), "--port", "70000"])
    assert exit_.value.code == 2


def test_a_directory_changed_on_disk_is_served_again_without_a_restart(model_dir, tmp_path, caplog):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    rec = Recommender.load(d, show_progress=False)
    server = RecommenderServer(rec, "127.0.0.1", 0, reload_every=0.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert get(f"{url}/similar?item=5&k=2")[0] == 200
        Recommender.load(d, show_progress=False).items.remove([5])  # what `mmrec index remove` does
        assert get(f"{url}/health")[1]["items"] == 31
        assert get(f"{url}/similar?item=5&k=2") == (404, {"error": "item '5' is not in this index (31 items)"})
        want = Recommender.load(d, show_progress=False).recommend("u3", 4)
        assert get(f"{url}/recommend?user=u3&k=4") == (200, {"results": dicts(want)})
        # A directory that does not load (caught mid-change, or broken) leaves the loaded one serving.
        (d / "manifest.json").write_text("{ not json")
        with caplog.at_level(logging.WARNING, logger="mmrec.server"):
            assert get(f"{url}/recommend?user=u3&k=4") == (200, {"results": dicts(want)})
        assert "changed but does not load" in caplog.text and "serving the copy loaded before" in caplog.text
    finally:
        server.shutdown()
        server.server_close()



def test_reload_sees_a_change_made_while_loading_and_never_mixes_or_retries_a_bad_version(model_dir, tmp_path,
                                                                                         monkeypatch):
    import shutil

    from mmrec.server import manifest_stamp

    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    stamp = manifest_stamp(d)  # as `mmrec serve` takes it: before loading
    rec = Recommender.load(d, show_progress=False)
    Recommender.load(d, show_progress=False).items.remove([5])  # lands while the server starts
    for reload_every, items in ((None, 32), (0.0, 31)):  # never reloading serves what was loaded
        server = RecommenderServer(rec, "127.0.0.1", 0, reload_every=reload_every, loaded_stamp=stamp)
        try:
            assert len(server.current().items) == items
        finally:
            server.server_close()
    server = RecommenderServer(Recommender.load(d, show_progress=False), "127.0.0.1", 0, reload_every=0.0)
    loads = []
    real_load = Recommender.load

    def load(directory, **kw):
        loads.append(directory)
        return real_load(directory, **kw)

    monkeypatch.setattr(Recommender, "load", load)
    try:
        before = server.current()
        # Rewritten again while loading: the copy loaded before stays, the next check loads the new one.
        def rewritten_meanwhile(directory, **kw):
            got = real_load(directory, **kw)
            real_load(directory, show_progress=False).items.remove([6])
            return got

        real_load(d, show_progress=False).items.remove([7])
        monkeypatch.setattr(Recommender, "load", rewritten_meanwhile)
        assert server.current() is before
        monkeypatch.setattr(Recommender, "load", load)
        assert len(server.current().items) == 29 and len(loads) == 1
        # A version that does not load is tried once, not at every check.
        (d / "manifest.json").write_text("{ not json")
        served = server.current()
        for _ in range(3):
            assert server.current() is served
        assert len(loads) == 2
        # ... until one of its files changes, as a copy written file by file does after its manifest.
        (d / "users.json").write_bytes((d / "users.json").read_bytes() + b" ")
        assert server.current() is served and len(loads) == 3
        # A copy that completes while its load fails is tried again: the failed version is the
        # files as they were when that load began.
        good = tmp_path / "good"
        shutil.copytree(model_dir, good)
        shutil.copy2(good / "manifest.json", d / "manifest.json")  # the rest still the old version's

        def completed_meanwhile(directory, **kw):
            try:
                return real_load(directory, **kw)
            finally:
                for f in good.iterdir():
                    shutil.copy2(f, d / f.name)

        monkeypatch.setattr(Recommender, "load", completed_meanwhile)
        assert server.current() is served  # did not load
        monkeypatch.setattr(Recommender, "load", load)
        assert len(server.current().items) == 32 and len(loads) == 4
    finally:
        server.server_close()


def test_a_directory_gone_for_seconds_is_said_once(model_dir, tmp_path, monkeypatch, caplog):
    import shutil

    import mmrec.server

    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    server = RecommenderServer(Recommender.load(d, show_progress=False), "127.0.0.1", 0, reload_every=0.0)
    try:
        served = server.current()
        shutil.rmtree(d)
        clock = [mmrec.server.time.monotonic() + 10.0]
        monkeypatch.setattr(mmrec.server.time, "monotonic", lambda: clock[0])
        with caplog.at_level("WARNING", logger="mmrec.server"):
            for step in range(4):  # 0, 3, 6, 9 s without a manifest
                assert server.current() is served
                clock[0] += 3.0
        assert caplog.text.count("has had no mmrec manifest") == 1
    finally:
        server.server_close()


def test_a_reloaded_directory_keeps_the_encoders_already_loaded():
    from mmrec.item_index import Encoders

    spec = {"text": {"model": "m", "identity": "abc"}, "image": {"model": "v", "identity": "x"}}
    old = Encoders(dict(spec))
    old._loaded = {"text": "warm text encoder", "image": "warm image encoder"}
    new = Encoders(dict(spec, image={"model": "v2", "identity": "y"}))  # the image encoder changed
    assert new.adopt(old) == ["text"] and new._loaded == {"text": "warm text encoder"}
    elsewhere = Encoders(dict(spec), device="meta")
    assert elsewhere.adopt(old) == []  # loaded on another device: not taken


def test_other_requests_are_answered_from_the_old_copy_while_one_reloads(model_dir, tmp_path, monkeypatch):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    rec = Recommender.load(d, show_progress=False)
    real_load = Recommender.load
    loading, release = threading.Event(), threading.Event()

    def slow_load(directory, **kw):
        loading.set()
        release.wait(20)
        return real_load(directory, **kw)

    server = RecommenderServer(rec, "127.0.0.1", 0, reload_every=0.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        real_load(d, show_progress=False).items.remove([5])
        monkeypatch.setattr(Recommender, "load", slow_load)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(get, f"{url}/health")  # finds the change and loads it
            assert loading.wait(10)
            # Answered while that load is under way, from the copy loaded before (item 5 still there).
            with urllib.request.urlopen(f"{url}/similar?item=5&k=2", timeout=5) as response:
                assert json.loads(response.read()) == {"results": dicts(rec.similar(5, 2))}
            release.set()
            assert first.result(timeout=30) == (200, {"status": "ok", "kind": "trained", "items": 31, "users": 48,
                                                      "modalities": ["content"]})
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("warm", [True, False])
def test_a_reloaded_copy_with_a_new_text_encoder_loads_it_before_serving_when_warm(tmp_path, tiny_bert_dir, warm):
    import shutil

    from mmrec.item_index import ItemIndex

    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n2,robot dog\n3,cooking show\n")
    ItemIndex.build(tmp_path / "items.csv", tmp_path / "text", text_encoder=tiny_bert_dir, image_encoder=None,
                    show_progress=False)
    d = tmp_path / "served"
    ItemIndex.from_features([1, 2, 3], {"x": np.eye(3, dtype=np.float32)}, show_progress=False).save(d)
    server = RecommenderServer(Recommender.load(d, show_progress=False), "127.0.0.1", 0, reload_every=0.0, warm=warm)
    try:
        shutil.rmtree(d)
        shutil.copytree(tmp_path / "text", d)
        new = server.current()  # the request that finds the change loads it: the encoder too, when warm
        assert new.items.modalities == ["text"] and ("text" in new.items.encoders._loaded) == warm
        server.warm_up()
        assert "text" in server.recommender.items.encoders._loaded
    finally:
        server.server_close()


def test_a_server_stopped_by_ctrl_c_answers_503_to_new_connections_while_it_drains(model_dir):
    # serve's Ctrl-C / SIGTERM ends serve_forever before the drain: a connection made during the
    # drain was reset when the process exited, never answered
    rec = Recommender.load(model_dir, show_progress=False)
    server = RecommenderServer(rec, "127.0.0.1", 0)
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    try:
        assert server.begin_request()  # a request being answered
        server.shutdown()  # serve_forever returned (the KeyboardInterrupt)
        left = []
        drainer = threading.Thread(target=lambda: left.append(server.drain(timeout=30, accept=True)))
        drainer.start()
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.request("GET", "/health")
        answer = conn.getresponse()
        assert (answer.status, json.loads(answer.read())) == (503, {"error": "the server is stopping"})
        conn.close()
        assert drainer.is_alive()  # still waiting for the request being answered
        server.end_request()
        drainer.join(30)
        assert left == [0] and server.drain(timeout=0, accept=True) == 0  # nothing left: returns at once
    finally:
        server.server_close()


def test_closing_answers_503_to_connections_the_system_still_queued(model_dir):
    # a connection made after serve_forever's last accept sat in the listening socket's queue and was reset
    # when server_close closed it (mmrec serve: at Ctrl-C with nothing in flight, or after the drain)
    rec = Recommender.load(model_dir, show_progress=False)
    server = RecommenderServer(rec, "127.0.0.1", 0)
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    server.shutdown()
    loop.join()
    queued = []
    for _ in range(3):  # accepted by the system, never by the server
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.request("GET", "/health")
        queued.append(conn)
    server.server_close()
    for conn in queued:
        answer = conn.getresponse()
        assert (answer.status, json.loads(answer.read())) == (503, {"error": "the server is stopping"})
        conn.close()
    assert not server._handlers
    with pytest.raises(ConnectionRefusedError):  # closed now: refused, not queued
        socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
    server.server_close()  # twice: nothing more to do


def test_a_port_that_cannot_be_bound_is_refused_without_accepting_on_the_idle_socket(model_dir, monkeypatch):
    # the standard library closes the server when bind or listen fails: the queue's clean-up took the idle
    # socket (which polls as readable) for one with connections, and spun a core for a second
    rec = Recommender.load(model_dir, show_progress=False)
    monkeypatch.setattr(RecommenderServer, "handle_request", lambda self: pytest.fail("accepted on a dead socket"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            RecommenderServer(rec, "127.0.0.1", busy.getsockname()[1])


def test_closing_shuts_idle_kept_alive_connections_and_joins_their_threads(model_dir):
    rec = Recommender.load(model_dir, show_progress=False)
    server = RecommenderServer(rec, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    conn.request("GET", "/health")
    assert conn.getresponse().read()  # answered; the connection stays open, its thread waiting for the next request
    assert server._handlers
    handlers = list(server._handlers)
    server.shutdown()
    started = time.monotonic()
    server.server_close()  # (a thread on an idle connection held a program's exit a minute)
    assert time.monotonic() - started < 10 and not any(t.is_alive() for t in handlers)
    conn.close()


def test_a_request_queued_for_the_lock_gives_up_when_the_server_stops(model_dir):
    rec = Recommender.load(model_dir, show_progress=False)
    server = RecommenderServer(rec, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    answers = []
    try:
        with server.lock:  # a long request holds the directory
            asker = threading.Thread(target=lambda: answers.append(get(f"{url}/recommend?user=u3&k=2")))
            asker.start()
            time.sleep(0.3)  # queued for the lock
            assert server.drain(timeout=0.2) == 1
        asker.join(30)
        # (it ran its route once the lock was free, after the stop: work for a client being dropped)
        assert answers == [(503, {"error": "the server is stopping"})]
    finally:
        server.shutdown()
        server.server_close()


def test_a_handler_thread_that_never_started_is_not_joined(model_dir, monkeypatch):
    rec = Recommender.load(model_dir, show_progress=False)
    server = RecommenderServer(rec, "127.0.0.1", 0)
    a, b = socket.socketpair()

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        server.process_request(a, ("127.0.0.1", 1))
    monkeypatch.undo()
    assert not server._handlers  # (kept, server_close raised "cannot join thread before it is started")
    real_start = threading.Thread.start

    def start_then_interrupted(self):  # SIGTERM's KeyboardInterrupt as start() returns: the thread runs
        real_start(self)
        raise KeyboardInterrupt

    busy = threading.Event()
    monkeypatch.setattr(threading.Thread, "start", start_then_interrupted)
    monkeypatch.setattr(RecommenderServer, "process_request_thread", lambda self, *args: busy.wait(30))
    with pytest.raises(KeyboardInterrupt):
        server.process_request(a, ("127.0.0.1", 1))
    monkeypatch.undo()
    running = list(server._handlers)
    assert len(running) == 1 and running[0].is_alive()  # kept, to be joined (it was dropped, and left running)
    busy.set()
    server.server_close()
    assert not running[0].is_alive()
    b.close()
