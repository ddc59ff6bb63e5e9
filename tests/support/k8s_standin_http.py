"""The stand-in's HTTP server (``KubeApiStandin``): the Kubernetes REST API of a ``FakeCluster`` and of a
``FakeServers``, on 127.0.0.1, for the real ``kubernetes`` client (``tests/support/k8s_standin.py``)."""

import contextlib
import json
import re
import signal
import socket
import threading
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from tests.support.k8s_standin_api import (
    CONTAINER,
    OBJECTS_PATH,
    POD_LOG_PATH,
    POD_PATH,
    PROPAGATION,
    ApiError,
    pod_list,
    query_bool,
)
from tests.support.k8s_standin_cluster import FakeCluster
from tests.support.k8s_standin_servers import FakeServers


@dataclass
class Seen:
    """A request the stand-in answered: its method, path, query, JSON body and answer's status code."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    code: int = 0
    answer: Any = None  # the JSON answered (None for a log stream)


_RESOURCE_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def _forbidden(rules: list[dict[str, Any]], user: str, method: str, path: str, query: dict[str, str]) -> None:
    """Refuses (403) a request that no RBAC rule of ``rules`` (a Role's) allows, as the authorizer does."""
    m = _RESOURCE_PATH.match(path)
    if m is None:
        raise ApiError(403, "Forbidden", f'forbidden: User "{user}" cannot {method.lower()} path "{path}"')
    group, resource = m["group"] or "", m["plural"] + (f"/{m['sub']}" if m["sub"] else "")
    if method == "GET":
        verb = "get" if m["name"] else ("watch" if query_bool(query.get("watch")) else "list")
    elif method == "DELETE":
        verb = "delete" if m["name"] else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    for rule in rules:
        if (
            group in rule.get("apiGroups", [])
            and resource in rule.get("resources", [])
            and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
            and (not rule.get("resourceNames") or m["name"] in rule["resourceNames"])
        ):
            return
    qualified = m["plural"] + (f".{group}" if group else "")
    named = f'{qualified} "{m["name"]}"' if m["name"] else qualified
    where = f'resource "{resource}" in API group "{group}" in the namespace "{m["ns"]}"'
    details = {**({"name": m["name"]} if m["name"] else {}), "group": group, "kind": m["plural"]}
    raise ApiError(403, "Forbidden", f'{named} is forbidden: User "{user}" cannot {verb} {where}', details)


class _Logs(list):
    """A pod log to stream (chunked) instead of a JSON answer; ``cut``: lines after which the connection
    drops without the stream's end."""

    cut: int | None = None


class KubeApiStandin:
    """The Kubernetes REST API of ``cluster`` (Jobs or PyTorchJobs and their pods) and of ``servers``
    (Deployments, Services and their pods), either or both, served over HTTP on 127.0.0.1 (a free port) for
    the real ``kubernetes`` client; a bearer token is required, as from a kubeconfig's user. ``seen`` records
    every request; ``errors`` the stand-in's own failures (answered 500), which a test should expect to be
    empty. With ``rules`` (a Role's RBAC rules, bound to ``user``) a request that no rule allows is refused
    with 403 Forbidden, as the API server's authorizer refuses it.

    An interrupt of the Dagster run (``cluster.interrupt_at``) is delivered as it is on a real run
    termination, as SIGINT to the main thread, which Dagster turns into ``DagsterExecutionInterruptedError``
    while the step runs."""

    def __init__(
        self,
        cluster: FakeCluster | None = None,
        token: str = "phi-trainer-token",
        servers: FakeServers | None = None,
        rules: list[dict[str, Any]] | None = None,
        user: str = "system:serviceaccount:phi:phi-dagster",
    ) -> None:
        assert cluster is not None or servers is not None, "nothing to serve"
        self.cluster, self.token, self.servers, self.rules, self.user = cluster, token, servers, rules, user
        self.lock = cluster.lock if cluster is not None else servers.lock  # one request at a time
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._connections: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._main = threading.main_thread().ident

    @property
    def url(self) -> str:
        assert self._server is not None, "the stand-in is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "KubeApiStandin":
        standin = self

        class Handler(_Handler):
            pass

        Handler.standin = standin
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        if self.cluster is not None:
            self.cluster.on_interrupt = self._interrupt
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            for connection in self._connections:  # ends the threads waiting on kept-alive connections
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "KubeApiStandin":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, namespace: str = "phi") -> Path:
        """A kubeconfig whose current context reaches this stand-in with its token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "phi-trainer", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "phi-trainer", "namespace": namespace},
                }
            ],
            "current-context": "standin",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def requests(self, method: str | None = None, contains: str = "") -> list[Seen]:
        """The requests seen, optionally only those of ``method`` whose path contains ``contains``."""
        return [s for s in list(self.seen) if (method is None or s.method == method) and contains in s.path]

    def _interrupt(self) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if handler in (signal.default_int_handler, signal.SIG_DFL, signal.SIG_IGN, None):
            self.errors.append("an interrupt was due but no Dagster step is there to take it")
            return
        assert self._main is not None
        signal.pthread_kill(self._main, signal.SIGINT)

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """The answer (status code, JSON or ``_Logs``) of the model to a REST request."""
        c = self.cluster
        if self.servers is not None and (answer := self.servers.route(method, path, query, body)) is not None:
            return answer
        if m := POD_LOG_PATH.match(path):
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            if c is None:
                raise ApiError(400, "BadRequest", f"the stand-in keeps no log of pod {m['name']}")
            if query.get("container", CONTAINER) != CONTAINER:
                raise ApiError(
                    400, "BadRequest", f"container {query['container']} is not valid for pod {m['name']}"
                )
            pod = c.pod_named(m["ns"], m["name"])
            cut, running = pod.attempt.stream_cuts > 0, pod.state == "running"
            follow, timestamps = query_bool(query.get("follow")), query_bool(query.get("timestamps"))
            logs = _Logs(c.pod_log(m["ns"], m["name"], follow, timestamps))
            if cut and running:
                pod.attempt.stream_cuts -= 1
                logs.cut = len(logs) // 2
            return 200, logs
        if m := POD_PATH.match(path):
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            models = [x for x in (c, self.servers) if x is not None]
            if m["name"]:
                for model in models[:-1]:
                    with contextlib.suppress(ApiError):
                        return 200, model.read_pod(m["ns"], m["name"])
                return 200, models[-1].read_pod(m["ns"], m["name"])
            items = [
                pod
                for model in models
                for pod in model.list_pods(m["ns"], query.get("labelSelector"), query.get("fieldSelector"))[
                    "items"
                ]
            ]
            revision = max(model.revision for model in models)
            return 200, pod_list(items, revision)
        m = OBJECTS_PATH.match(path)
        res = c.resource if c is not None else None
        if (
            res is None
            or m is None
            or (m["group"], m["version"], m["plural"]) != (res.group, res.version, res.plural)
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns, name = m["ns"], m["name"]
        if name is None and method == "POST":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the request body is not a JSON object")
            return 201, c.create_object(ns, body)
        if name is not None and m["status"] and method == "GET":
            return 200, c.read_object_status(ns, name)
        if name is not None and not m["status"] and method == "GET":
            return 200, c.read_object(ns, name)
        if name is not None and not m["status"] and method == "DELETE":
            policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
            if policy is not None and policy not in PROPAGATION:
                raise ApiError(400, "BadRequest", f"propagationPolicy {policy!r} is not one of {PROPAGATION}")
            return 200, c.delete_object(ns, name)
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: KubeApiStandin

    def setup(self) -> None:
        super().setup()
        self.standin._connections.append(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # requests are kept in ``seen`` instead
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        seen = Seen(method, url.path, query, None)
        self.standin.seen.append(seen)
        try:
            try:
                seen.body = json.loads(raw) if raw else None
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"the request body is not JSON: {exc}") from None
            if self.headers.get("Authorization") != f"Bearer {self.standin.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if self.standin.rules is not None:
                _forbidden(self.standin.rules, self.standin.user, method, url.path, query)
            with self.standin.lock:
                code, answer = self.standin.route(method, url.path, query, seen.body)
        except ApiError as exc:
            code, answer = exc.code, exc.status()
        except Exception as exc:  # the stand-in's own failure (or a failed assertion in the model)
            self.standin.errors.append(f"{method} {self.path}: {traceback.format_exc()}")
            code, answer = 500, ApiError(500, "InternalError", f"stand-in error: {exc!r}").status()
        seen.code = code
        if isinstance(answer, _Logs):
            self._stream(answer)
            return
        seen.answer = answer
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, lines: _Logs) -> None:
        """A followed log, chunked as the API server streams it; every line arrives in two pieces, so the
        client has to put the lines back together."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i, line in enumerate(lines):
                if i == lines.cut:
                    self.close_connection = True  # no closing chunk: the client sees a broken stream
                    return
                cut = len(line) // 2
                for piece in (line[:cut], line[cut:]):
                    if piece:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# --- Running the launcher -----------------------------------------------------------------------------------
