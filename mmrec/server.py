"""A JSON-over-HTTP server for one index or trained directory (``mmrec serve``).

A ``mmrec`` command run as a fresh process pays its imports and the directory load on every
call (3-10 s; README, Serving latency), where one request to an open directory takes well
under a millisecond. ``mmrec serve`` keeps the directory open and answers HTTP ``GET``
requests with the objects ``--json`` prints, from the standard library's threading HTTP
server (no extra dependency)::

    GET /health                                  {"status": "ok", "kind", "items", "users", "modalities"}
    GET /recommend?user=42&k=10                  {"results": [{"item_id", "score", <fields>}, ...]}
    GET /history?item=1&item=50&k=10[&user=42]   a history of items (a known user's newer ones with user; user alone:
                                                 that user's liked items folded in);
                                                 its answer adds "ignored": the items not in the index, left out
    GET /similar?item=1&k=10[&by=cosine]
    GET /search?text=space+adventure&k=10[&by=content]
    GET /item?item=1[&item=50]                   {"results": [{"item_id", <fields>}, ...]}: the stored display fields
    GET /explain?item=1[&item=50]&k=5            {"results": [{"item_id", <fields>, "attention", "neighbours"}, ...]}:
                                                 as ``mmrec explain --json``

Options per route (as the CLI's): ``k`` (default 10); ``explain`` and ``include_known``
(``1``/``0``, ``true``/``false``); ``diversity`` (``recommend``, ``history``); ``method``
(``history``); ``explain_items`` (``recommend``, ``history``); ``by`` (``similar``: ``index`` / ``cosine``; ``search``: ``index`` / ``content``); on every
query route ``exclude`` (repeated, ``exclude=7&exclude=9``: item ids never to return), ``only``
(repeated: the only item ids to return) and ``where`` (repeated ``FIELD=VALUE``, ``FIELD!=VALUE``
or ``FIELD>=N`` (``>``, ``<=``, ``<``), URL-encoded as ``where=genres%3DComedy``: only items whose
display field matches, as the CLI's ``--where``). An answer to a request with ``exclude`` or
``only`` adds ``"ignored_exclude"`` / ``"ignored_only"``: those of its ids not in the index (a typo,
or an item removed since), which the query left out.
A parameter a route does not take is refused, so a misspelt one is not silently ignored.

Status codes: 200 with ``{"results": [...]}`` (``/health``: its own object); 400 ``{"error": ...}`` for a bad request (a
missing or malformed parameter, a query the directory cannot answer); 404 for an unknown
route, user or item; ``HEAD`` as ``GET`` without the body; 405 for another HTTP method (501 for a
method HTTP does not define); 503 while stopping (:meth:`RecommenderServer.drain`); 500 for
anything else (logged with its traceback). A kept-alive connection idle for a minute is closed. Requests are answered
one at a time (a lock around the directory: its caches are not thread-safe), each in well under
a millisecond except text queries (an encoder pass).

The directory is loaded again when it changes on disk (``mmrec index add`` / ``update`` /
``remove`` / ``rebuild`` / ``tune``, a new ``train --overwrite``): at most one check a second, new
items served without a restart.

Binds to 127.0.0.1 by default: there is no authentication, so put it behind your own front end
before exposing it.
"""
from __future__ import annotations

import json
import logging
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from index.persist import manifest_stamp
from mmrec.errors import MMRecError, UnknownIdError
from mmrec.item_index import shown_fields, split_where

logger = logging.getLogger("mmrec.server")

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
IDLE_SECONDS = 60
STOPPING = HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the server is stopping"}  # what a stopping server answers
MISSING_WARN_SECONDS = 5  # a directory without its manifest this long is said to be gone (once)
MAX_DISCARDED_BODY = 1 << 20  # a GET body up to this is read past; a longer one closes the connection


def _files_signature(directory: Path) -> tuple:
    """Every file of ``directory`` (recursively) with its size and modification time: what a copy
    in progress changes although the manifest it already wrote does not."""
    out = []
    for path in sorted(Path(directory).rglob("*")):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


class BadRequest(MMRecError):
    """A request the server refuses with 400 (the message says why)."""


class Params:
    """A request's query parameters, read by name and type."""

    def __init__(self, route: str, query: str) -> None:
        self.route = route
        try:
            self._values = parse_qs(query, keep_blank_values=True, strict_parsing=False, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest("the query string is not UTF-8") from None

    def all(self, name: str) -> list[str]:
        values = self._values.get(name, [])
        if name in ("item", "user") and any(not v.strip() for v in values):  # no id is empty: a malformed URL
            raise BadRequest(f"{self.route}: '{name}' is empty")
        return values

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def one(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        values = self.all(name)
        if len(values) > 1:
            raise BadRequest(f"{self.route}: '{name}' given {len(values)} times, expected once")
        if not values:
            if required:
                raise BadRequest(f"{self.route}: missing parameter '{name}'")
            return default
        return values[0]

    def integer(self, name: str, default: int, minimum: int) -> int:
        text = self.one(name)
        if text is None:
            return default
        if not re.fullmatch(r"-?[0-9]+", text):  # (int() also took "1_0", " 1" and other scripts' digits)
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise BadRequest(f"{self.route}: '{name}' must be an integer, got {shown!r}")
        digits = text.lstrip("-").lstrip("0") or "0"  # (int() refuses 4,300 digits and more: it was a 500)
        if len(digits) > 18:
            if text.startswith("-"):
                raise BadRequest(f"{self.route}: '{name}' must be at least {minimum}, got {text[:20]}...")
            return 10**18  # more than any index holds, as the CLI's -k of that many digits (it was a 400 here)
        value = -int(digits) if text.startswith("-") else int(digits)
        if value < minimum:
            raise BadRequest(f"{self.route}: '{name}' must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        text = self.one(name)
        if text is None:
            return default
        try:
            return float(text)
        except ValueError:
            raise BadRequest(f"{self.route}: '{name}' must be a number, got {text!r}") from None

    def flag(self, name: str) -> bool:
        text = self.one(name)
        if text is None:
            return False
        if text.lower() in TRUE or text == "":  # ?explain alone means on
            return True
        if text.lower() in FALSE:
            return False
        raise BadRequest(f"{self.route}: '{name}' must be 1 or 0 (true / false), got {text!r}")

    def check_names(self, allowed: tuple[str, ...]) -> None:
        """Refuse a parameter the route does not take (a misspelt one would be ignored silently)."""
        unknown = sorted(set(self._values) - set(allowed))
        if unknown:
            takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
            raise BadRequest(f"{self.route}: unknown parameter(s) {', '.join(map(repr, unknown))}; this route {takes}")


def _explain_items(p: Params) -> int:
    """The ``explain_items`` parameter, which only ``explain`` uses (refused without it, as by the CLI)."""
    from mmrec.explain import DEFAULT_HISTORY

    if p.one("explain_items") is not None and not p.flag("explain"):
        raise BadRequest(f"{p.route}: 'explain_items' sets how many history items 'explain' names: give explain=1 too")
    return p.integer("explain_items", DEFAULT_HISTORY, 1)


def _only(rec, p: Params) -> Collection[Any] | None:
    """The candidates of ``only`` and ``where`` (``None``: every item), as the CLI's ``--only`` / ``--where``."""
    only = p.all("only") if "only" in p else None
    where = p.all("where")
    for text in where:
        if split_where(text) is None:
            raise BadRequest(f"{p.route}: 'where' must be FIELD=VALUE, FIELD!=VALUE or FIELD>=N (>, <=, <), URL-"
                             f"encoded (where=genres%3DComedy), got {text!r}")
    return only if not where else rec.items.candidate_ids(only, where)


def _filters(rec, p: Params) -> dict[str, Any]:
    return {"exclude": p.all("exclude"), "only": _only(rec, p)}


def _ignored(rec, p: Params) -> dict[str, list[str]]:
    """The ``exclude`` / ``only`` ids given that are not in the index (a client sees no server log)."""
    return {f"ignored_{name}": [i for i in dict.fromkeys(p.all(name)) if i.strip() and rec.items._try_resolve(i) is None]
            for name in ("exclude", "only") if name in p}  # (a bare only= is the empty set of candidates)


def _recommend(rec, p: Params) -> list:
    user = p.one("user", required=True)
    return rec.recommend(user, p.integer("k", 10, 1), exclude_known=not p.flag("include_known"),
                         explain=p.flag("explain"), history=_explain_items(p), diversity=p.number("diversity", 0.0),
                         **_filters(rec, p))


def _history(rec, p: Params) -> tuple[list, dict[str, Any]]:
    items, user = p.all("item"), p.one("user")
    if not items and user is None:
        raise BadRequest("/history: give one or more 'item' parameters (item=1&item=50), with or without 'user'")
    results = rec.recommend_history(items, p.integer("k", 10, 1), user=user, method=p.one("method", "auto"),
                                    exclude_history=not p.flag("include_known"), explain=p.flag("explain"),
                                    explain_items=_explain_items(p),
                                    diversity=p.number("diversity", 0.0), **_filters(rec, p))
    # the items the answer left out (removed since, or typos): a client sees no server log
    return results, {"ignored": [i for i in dict.fromkeys(items) if rec.items._try_resolve(i) is None]}


def _similar(rec, p: Params) -> list:
    return rec.similar(p.one("item", required=True), p.integer("k", 10, 1), explain=p.flag("explain"),
                       by=p.one("by", "index"), **_filters(rec, p))


def _search(rec, p: Params) -> list:
    return rec.search_text(p.one("text", required=True), p.integer("k", 10, 1), by=p.one("by", "index"),
                           **_filters(rec, p))


def _explain(rec, p: Params) -> list:
    items = p.all("item")
    if not items:
        raise BadRequest("/explain: give one or more 'item' parameters (item=1&item=50)")
    k = p.integer("k", 5, 1)
    return [rec.explain(item, k) for item in items]  # an unknown id is a 404 naming it


def _item(rec, p: Params) -> list[dict[str, Any]]:
    items = p.all("item")
    if not items:
        raise BadRequest("/item: give one or more 'item' parameters (item=1&item=50)")
    out = []
    for item in items:  # an unknown id is a 404 naming it, as /similar's
        item_id = rec.items.resolve_id(item)
        out.append({"item_id": item_id, **shown_fields(rec.items.fields(item_id), ("item_id",))})
    return out


FILTERS = ("exclude", "only", "where")  # every query route takes them
# route -> (handler: results, or results and more keys of the answer; the parameters it takes)
ROUTES: dict[str, tuple[Callable[[Any, Params], list | tuple[list, dict[str, Any]]], tuple[str, ...]]] = {
    "/recommend": (_recommend, ("user", "k", "include_known", "explain", "explain_items", "diversity", *FILTERS)),
    "/history": (_history, ("item", "user", "k", "method", "include_known", "explain", "explain_items", "diversity",
                            *FILTERS)),
    "/similar": (_similar, ("item", "k", "explain", "by", *FILTERS)),
    "/search": (_search, ("text", "k", "by", *FILTERS)),
    "/item": (_item, ("item",)),
    "/explain": (_explain, ("item", "k")),
}


def health(rec) -> dict[str, Any]:
    return {"status": "ok", "kind": "trained" if rec.trained else "content", "items": len(rec.items),
            "users": len(rec.user_ids), "modalities": rec.items.modalities}


# C0 and C1 control characters, escaped in the access log as the standard library's log_message does
# (this handler logs through logging instead): a request could otherwise colour or overwrite lines
# of an operator's terminal or log viewer.
_CONTROL = str.maketrans({c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]})


def _logged(text: str) -> str:
    """A request's target or line as the access log shows it: its UTF-8 decoded (http.server reads
    the line as Latin-1: ``café`` read ``cafÃ©``), control characters escaped."""
    try:
        text = text.encode("latin-1").decode("utf-8")
    except UnicodeError:  # (not UTF-8: as read)
        pass
    return text.translate(_CONTROL)


class Handler(BaseHTTPRequestHandler):
    """Answers one request; the directory is the server's ``recommender``."""

    server: RecommenderServer
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    # The headers and the body leave as two writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK of the headers (40 ms on Linux) on a kept-alive connection.
    disable_nagle_algorithm = True

    timeout = IDLE_SECONDS  # an idle kept-alive connection is closed (and its thread freed) after this

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        start = time.perf_counter()
        self._discard_body()
        if not self.server.begin_request():  # stopping: no new work may start while it waits for the rest
            self.close_connection = True
            logger.info('%s "%s %s" %d', self.client_address[0], self.command, _logged(self.path),
                        HTTPStatus.SERVICE_UNAVAILABLE)
            self._send(*STOPPING)
            return
        try:
            self._get(start)
        finally:
            self.server.end_request()

    do_HEAD = do_GET  # noqa: N815 -- GET's status and headers, without the body (RFC 9110 9.3.2; health checks)

    def _get(self, start: float) -> None:
        try:
            # The request line arrives decoded as Latin-1: a client that sends a typed "café" unescaped
            # sends its UTF-8 bytes, which are read back as such here (invalid UTF-8 is a 400).
            try:
                url = urlsplit(self.path.encode("latin-1").decode("utf-8"))
            except UnicodeError:
                raise BadRequest("the request line is not UTF-8 text: escape it as %XX") from None
            status, body = self._answer(url.path, url.query)
        except UnknownIdError as e:
            status, body = HTTPStatus.NOT_FOUND, {"error": str(e)}
        except MMRecError as e:  # BadRequest, ConfigError and the rest: what the CLI prints as "error: ..."
            status, body = HTTPStatus.BAD_REQUEST, {"error": str(e)}
        except Exception as e:  # noqa: BLE001 -- one bad request must not stop the server
            logger.exception("GET %s failed", _logged(self.path))
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(e).__name__}: {e}"}
        # Logged before the answer is written: a client that has its answer may stop the server at
        # once, and the handler threads are daemons (the line was lost, under load).
        logger.info('%s "%s %s" %d %.2f ms', self.client_address[0], self.command, _logged(self.path), status,
                    1000 * (time.perf_counter() - start))
        self._send(status, body)

    def _not_allowed(self) -> None:
        self._discard_body()
        logger.info('%s "%s %s" %d', self.client_address[0], self.command, _logged(self.path),
                    HTTPStatus.METHOD_NOT_ALLOWED)
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{self.command} is not served: every route is a GET"},
                   {"Allow": "GET, HEAD"})

    # Every method HTTP defines (RFC 9110, PATCH: RFC 5789); one it does not define gets the
    # standard library's 501, in JSON (send_error).
    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

    def _send(self, status: HTTPStatus | int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        elif self.request_version == "HTTP/1.0":  # kept open on its asking: HTTP/1.0 reuses it only when told
            self.send_header("Connection", "keep-alive")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _discard_body(self) -> None:
        """Read a request body nobody asked for: left unread, it would be taken for the next
        request on a kept-alive connection. A body of no stated length (chunked, or a malformed
        Content-Length) cannot be skipped: the connection closes after the answer instead."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if self.headers.get("Transfer-Encoding") or length < 0 or length > MAX_DISCARDED_BODY:
            self.close_connection = True  # (a body this large is not read at all: the connection ends instead)
        else:
            while length > 0:  # in chunks: never an allocation of the length a client claims
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, headers too long, an
        unknown method) as JSON like every other answer, closing the connection as it does."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # a request line it could not parse: answer with a status line
            self.request_version = self.protocol_version  # and headers, not a bare HTTP/0.9 body
        logger.info('%s "%s" %d', self.client_address[0], _logged((self.requestline or "").strip()), code)
        self._send(code, {"error": message or phrase})

    def _answer(self, path: str, query: str) -> tuple[HTTPStatus, dict[str, Any]]:
        params = Params(path, query)
        if path == "/health":
            params.check_names(())
            rec = self.server.current()
            with self.server.lock:
                return HTTPStatus.OK, health(rec)
        if path not in ROUTES:
            return HTTPStatus.NOT_FOUND, {"error": f"no route {path!r}; routes: /health, {', '.join(ROUTES)}"}
        route, allowed = ROUTES[path]
        params.check_names(allowed)
        rec = self.server.current()  # may load a changed directory first, without the lock
        with self.server.lock:
            if self.server.stopping:  # (queued for the lock, it ran its route after its connection was shut)
                return STOPPING
            results = route(rec, params)
            results, more = results if isinstance(results, tuple) else (results, {})
            if any(name in params for name in FILTERS[:2]):
                more = {**more, **_ignored(rec, params)}
        return HTTPStatus.OK, {"results": [r if isinstance(r, dict) else r.to_dict() for r in results], **more}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- the standard library's name
        logger.debug(format, *args)  # do_GET logs each request once, with its time


_NOW = object()  # RecommenderServer's loaded_stamp default: the manifest as it is when the server starts


ACCEPT_POLL_SECONDS = 0.05  # drain(accept=True) checks this often whether the wait is over
CLOSE_JOIN_SECONDS = 5  # server_close() waits this long, in all, for the handler threads to end (after drain)
QUEUED_SECONDS = 1.0  # server_close() accepts the connections still queued for this long at most, and gives
# their requests as long again to arrive and get their 503 before it shuts them


class RecommenderServer(ThreadingHTTPServer):
    """:class:`ThreadingHTTPServer` answering for ``recommender`` (a loaded
    :class:`mmrec.recommender.Recommender`); ``port`` 0 picks a free port (``server_port``).

    With ``reload_every`` seconds (default 1; ``None``: never), a request first checks, at most
    that often, whether the directory changed on disk (``mmrec index add`` / ``remove`` or a
    new ``mmrec train --overwrite`` rewrite it whole, then rename it into place) and if so loads
    it again (that request waits; the others are answered from the copy loaded before, which the
    new one then replaces), keeping the text / image encoders already loaded when they are the
    same: new items are served without a restart. ``loaded_stamp`` is the
    :func:`manifest_stamp` taken before ``recommender`` was loaded (default: the manifest now),
    so a change made while it loaded is seen. A load that fails, or during which the directory changed
    again, leaves the loaded copy serving (with a warning); a failed version is not tried again
    until one of the directory's files changes (a copy still in progress does). A directory whose
    manifest stays missing (deleted, or replaced by another folder) is said to be so once, with a
    warning, after :data:`MISSING_WARN_SECONDS`. With ``warm``, a reloaded copy whose text
    encoder changed loads it before it replaces the old copy, not at its first text query, which
    would hold up every request meanwhile; :meth:`warm_up` loads the first copy's (``mmrec serve``
    calls it once listening).
    """

    # Handler threads are daemons (a program that ends without server_close() is not held up by an
    # idle kept-alive connection, a minute), and server_close() shuts their connections and joins
    # them: a process that exited with handler threads still alive aborted now and then ("terminate
    # called without an active exception", as Ctrl-C under load did), in the C++ state torch keeps.
    daemon_threads = True
    # Connections waiting to be accepted: the standard library's 5 makes a burst of new clients
    # wait seconds for the kernel's SYN retries (the kernel caps it at net.core.somaxconn).
    request_queue_size = socket.SOMAXCONN

    def __init__(self, recommender, host: str = "127.0.0.1", port: int = 8000, *,
                 reload_every: float | None = 1.0, device: str | None = None,
                 loaded_stamp: Any = _NOW, warm: bool = False) -> None:
        self.reload_every = reload_every
        self.device = device
        self.warm = warm
        self.recommender = self._prepare(recommender)
        self.lock = threading.Lock()
        self._directory = recommender.items.directory
        self._stamp = manifest_stamp(self._directory) if loaded_stamp is _NOW else loaded_stamp
        self._failed: tuple | None = None  # (manifest stamp, files signature) of a version that did not load
        self._missing_since: float | None = None  # when the manifest was first found missing
        self._missing_said = False
        self._checked = time.monotonic()
        self._reloading = threading.Lock()  # one load at a time; the request lock is not held while loading
        self._active = 0  # requests being answered (begin_request .. end_request)
        self._connections: set[socket.socket] = set()  # open client connections, shut at server_close
        self._handlers: set[threading.Thread] = set()  # threads answering them, joined at server_close
        self._idle = threading.Condition()
        self._stopping = False
        self._listening = False  # (server_activate: a bind or listen that failed closes an idle socket)
        self._accepted = 0  # connections accepted
        if ":" in host:  # an IPv6 address such as ::1
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`drain` (or :meth:`server_close`) has begun: new work is refused."""
        return self._stopping

    def begin_request(self) -> bool:
        """Count a request in, unless the server is stopping (:meth:`drain`): then ``False``."""
        with self._idle:
            if self._stopping:
                return False
            self._active += 1
            return True

    def end_request(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def drain(self, timeout: float = 30.0, *, accept: bool = False) -> int:
        """Refuse new requests (503) and wait up to ``timeout`` seconds for those being answered.
        A process that exits while a handler thread (a daemon) is inside torch or FAISS can abort
        ("terminate called without an active exception"), as Ctrl-C under load did.

        Args:
            timeout: seconds to wait at most.
            accept: go on accepting connections while waiting, for a caller whose
                ``serve_forever`` has already returned (``mmrec serve`` after Ctrl-C or SIGTERM):
                a client that connects meanwhile gets its 503 instead of a reset connection.

        Returns:
            how many requests were still being answered at the timeout (0: all done).
        """
        with self._idle:
            self._stopping = True
            if not self._active:
                return 0
            logger.info("stopping: waiting for %d request(s) being answered", self._active)
        done = threading.Event()

        def answer_new() -> None:
            self.timeout = ACCEPT_POLL_SECONDS  # handle_request returns this often without a connection
            while not done.is_set():
                self.handle_request()

        acceptor = threading.Thread(target=answer_new, daemon=True) if accept else None
        if acceptor is not None:
            acceptor.start()
        try:
            with self._idle:
                self._idle.wait_for(lambda: self._active == 0, timeout)
                return self._active
        finally:
            done.set()
            if acceptor is not None:
                acceptor.join()

    def process_request(self, request, client_address) -> None:
        """ThreadingMixIn's, with the thread counted before it starts (counted once running, one
        started just before server_close() could be missed by its join)."""
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  daemon=self.daemon_threads)
        with self._idle:
            self._connections.add(request)
            self._handlers.add(thread)
        try:
            thread.start()
        except BaseException:  # (no thread to start, or Ctrl-C just then): not one to join, unless it started
            if thread.ident is None:
                with self._idle:
                    self._handlers.discard(thread)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._idle:
                self._handlers.discard(threading.current_thread())

    def shutdown_request(self, request) -> None:
        with self._idle:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Stop listening, end every open connection (an idle kept-alive one would hold its thread
        for a minute) and join the handler threads."""
        with self._idle:
            self._stopping = True
        self._refuse_queued()
        super().server_close()  # stop listening: a connection made from now on is refused, not reset
        with self._idle:
            open_now = list(self._connections)
        for connection in open_now:
            try:
                connection.shutdown(socket.SHUT_RDWR)  # its thread's read returns: the thread ends
            except OSError:
                pass  # closed meanwhile
        with self._idle:
            handlers = list(self._handlers)
        deadline = time.monotonic() + CLOSE_JOIN_SECONDS  # for all of them together, not each
        for thread in handlers:
            if thread is not threading.current_thread() and thread.ident is not None:  # (started)
                thread.join(max(0.0, deadline - time.monotonic()))

    def server_activate(self) -> None:
        super().server_activate()
        self._listening = True

    def get_request(self) -> tuple[socket.socket, Any]:
        request = super().get_request()
        self._accepted += 1  # (counted for _refuse_queued)
        return request

    def _refuse_queued(self) -> None:
        """Accept the connections the system still queues for the listening socket (made after
        ``serve_forever``'s last accept) and let their threads answer 503, waiting up to
        :data:`QUEUED_SECONDS` for them: closing the socket reset them, never answered."""
        if not self._listening or self.socket.fileno() < 0:  # (a bind that failed closes it too) or closed already
            return
        with self._idle:
            before = set(self._handlers)
        self.timeout = 0  # handle_request: one waiting connection, or return at once
        deadline = time.monotonic() + QUEUED_SECONDS  # (clients that keep connecting do not hold it)
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            while time.monotonic() < deadline and selector.select(0):
                accepted = self._accepted
                self.handle_request()
                if self._accepted == accepted:  # the accept failed (handle_request says nothing of it): stop
                    break
        with self._idle:
            queued = [t for t in self._handlers if t not in before]
        deadline = time.monotonic() + QUEUED_SECONDS
        for thread in queued:
            if thread.ident is not None:  # (started)
                thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request, client_address) -> None:
        """A client that hung up before its answer was written is no error of the server's (the
        standard library would print a traceback, even with -q)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("%s hung up before its answer was written", client_address)
            return
        super().handle_error(request, client_address)

    def _prepare(self, rec, old=None):
        """``rec`` made ready to serve: no progress bar per text query, encoders on ``device``; a
        reloaded copy takes over ``old``'s loaded encoders when unchanged, and with ``warm`` loads
        its text encoder otherwise."""
        rec.items.encoders.show_progress = False
        if self.device is not None:
            rec.items.encoders.to(self.device)
        if old is not None:
            rec.items.encoders.adopt(old.items.encoders)
            if self.warm:
                self.warm_up(rec)
        return rec

    def warm_up(self, rec=None) -> None:
        """Load the text encoder of ``rec`` (default: the copy serving now), when it has one."""
        rec = self.recommender if rec is None else rec
        if "text" in rec.items.manifest.get("encoders", {}):
            rec.items.encoders.get("text")

    def current(self):
        """The recommender to answer with, loaded again first if its directory changed (see the
        class docstring). Called without ``lock``: the request that finds the change loads the
        directory while the others go on with the copy loaded before; the new one replaces it
        in one assignment."""
        if self.reload_every is None or self._directory is None:
            return self.recommender
        now = time.monotonic()
        if now - self._checked < self.reload_every or not self._reloading.acquire(blocking=False):
            return self.recommender  # checked lately, or another request is loading it
        try:
            self._checked = now
            return self._reload()
        finally:
            self._reloading.release()

    def _reload(self):
        stamp = manifest_stamp(self._directory)
        if stamp is None:  # mid-rename; or, still so seconds later, gone: said once
            if self._missing_since is None:
                self._missing_since = time.monotonic()
            elif not self._missing_said and time.monotonic() - self._missing_since > MISSING_WARN_SECONDS:
                logger.warning("%s has had no mmrec manifest for %.0f s (deleted or replaced?): serving the copy "
                               "loaded before", self._directory, time.monotonic() - self._missing_since)
                self._missing_said = True
            return self.recommender
        self._missing_since, self._missing_said = None, False
        if stamp == self._stamp:
            return self.recommender
        if self._failed is not None and self._failed == (stamp, _files_signature(self._directory)):
            return self.recommender  # known bad, and no file changed since (a copy still in progress would)
        from mmrec.recommender import Recommender

        old = self.recommender
        # The files as they were when the load began: a copy that completes while the load fails
        # then differs from the failed version, and is tried at the next check.
        files = _files_signature(self._directory)
        try:
            new = Recommender.load(self._directory, show_progress=False)
        except Exception as e:  # noqa: BLE001 -- whatever the files hold, the loaded copy goes on serving
            logger.warning("%s changed but does not load (%s: %s): serving the copy loaded before", self._directory,
                           type(e).__name__, e)
            self._failed = (stamp, files)
            return old
        if manifest_stamp(self._directory) != stamp:  # rewritten while it loaded: files of two versions
            logger.info("%s changed again while it loaded: serving the copy loaded before until the next check",
                        self._directory)
            return old
        try:  # a warm text encoder stays warm, a changed one is loaded before the copy serves
            self._prepare(new, old)
        except Exception as e:  # noqa: BLE001 -- an encoder that does not load: the loaded copy goes on serving
            logger.warning("%s changed but its text encoder does not load (%s: %s): serving the copy loaded before",
                           self._directory, type(e).__name__, e)
            self._failed = (stamp, files)
            return old
        self.recommender, self._stamp = new, stamp
        logger.info("reloaded %s: %d items, %d users (was %d, %d)", self._directory, len(new.items),
                    len(new.user_ids), len(old.items), len(old.user_ids))
        return new
