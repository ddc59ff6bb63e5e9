"""The Kubernetes API server's side of the stand-in (``k8s_standin.py``): the kinds of object it serves,
its error answers (``Status``), label and field selectors, the checks it makes before the schema, and the
REST paths it answers."""

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any

import kubernetes.client as k8s
import kubernetes_validate

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMA_VERSION = "1.30"  # the Kubernetes version whose schemas created objects are checked against
CONTAINER = "pytorch"


@dataclass(frozen=True)
class Resource:
    """A kind of object the model runs, with its REST names."""

    kind: str
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name the API server's messages use (``jobs.batch``; a core kind's is its plural)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def details(self, name: str) -> dict[str, Any]:
        return {"name": name, **({"group": self.group} if self.group else {}), "kind": self.plural}

    def not_found(self, name: str) -> "ApiError":
        return ApiError(404, "NotFound", f'{self.qualified} "{name}" not found', self.details(name))

    def already_exists(self, name: str, prefix: str = "") -> "ApiError":
        message = f'{prefix}{self.qualified} "{name}" already exists'
        return ApiError(409, "AlreadyExists", message, self.details(name))

    def invalid(self, name: str, where: str, message: str) -> "ApiError":
        """422: the object failed validation (``where``: the field's path)."""
        cause = {"reason": "FieldValueInvalid", "message": f"Invalid value: {message}", "field": where}
        return ApiError(
            422,
            "Invalid",
            f'{self.kind}{"." + self.group if self.group else ""} "{name}" is invalid: {where}: {message}',
            {
                "name": name,
                **({"group": self.group} if self.group else {}),
                "kind": self.kind,
                "causes": [cause],
            },
        )


JOBS = Resource("Job", "batch", "v1", "jobs")
PYTORCHJOBS = Resource("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs")
RESOURCES = {r.kind: r for r in (JOBS, PYTORCHJOBS)}
DEPLOYMENTS = Resource("Deployment", "apps", "v1", "deployments")
SERVICES = Resource("Service", "", "v1", "services")


class ApiError(Exception):
    """An error answer of the API server; ``status()`` is the ``Status`` object it sends with it."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out

    def exception(self) -> k8s.ApiException:
        """The ``ApiException`` the client raises for this answer."""
        exc = k8s.ApiException(status=self.code, reason=HTTPStatus(self.code).phrase)
        exc.body = json.dumps(self.status())
        return exc


def ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


_DESERIALIZER = k8s.ApiClient()


def to_model(data: Any, klass: str) -> Any:
    """API JSON as the ``kubernetes.client`` model ``klass`` (``"V1Job"``), as the client builds it."""
    return _DESERIALIZER.deserialize(SimpleNamespace(data=json.dumps(data)), klass)


def validation_path(error: kubernetes_validate.ValidationError, prefix: str = "") -> str:
    out = prefix
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors (``a=b,c==d,e!=f``) and existence (``g``, ``!h``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = re.split(r"==?", term, maxsplit=1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def pod_fields(field_selector: str | None) -> dict[str, str]:
    """The field selector of a pod list: the fields the stand-in supports, with their values."""
    fields: dict[str, str] = {}
    for term in filter(None, (field_selector or "").split(",")):
        key, _, value = term.partition("=")
        if key not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')
        fields[key] = value.lstrip("=")
    return fields


def pod_list(pods: list[dict[str, Any]], revision: int) -> dict[str, Any]:
    items = [{k: v for k, v in pod.items() if k not in ("apiVersion", "kind")} for pod in pods]
    return {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": str(revision)},
        "items": items,
    }


def check_body(res: Resource, namespace: str, body: dict[str, Any]) -> None:
    """What the API server checks before the schema: the kind and the namespace of the object sent."""
    meta = body.get("metadata") or {}
    if (body.get("apiVersion"), body.get("kind")) != (res.api_version, res.kind):
        raise ApiError(
            400,
            "BadRequest",
            f"the API version in the data ({body.get('apiVersion')}) does not match the expected API "
            f"version ({res.api_version}) or kind ({body.get('kind')} is not {res.kind})",
        )
    if meta.get("namespace", namespace) != namespace:
        raise ApiError(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        )


# --- REST paths -----------------------------------------------------------------------------------------------

POD_LOG_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$")
POD_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+))?$")
OBJECTS_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?P<status>/status)?)?$"
)
SERVICES_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/services(?:/(?P<name>[^/]+))?$")
PROPAGATION = ("Background", "Foreground", "Orphan")


def query_bool(value: str | None) -> bool:
    """A boolean query parameter, read as the API server (Go's ``strconv.ParseBool``) does."""
    if value is None:
        return False
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ApiError(400, "BadRequest", f'strconv.ParseBool: parsing "{value}": invalid syntax')
