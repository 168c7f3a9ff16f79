"""The one module that calls the Kubernetes API (kopf's own watching aside).

Children are written with server-side apply under one field manager, so a field a
person set by hand on a child is taken back (``force``) and fields other managers own
(the HPA, a mutating webhook) are left alone. Errors come out as :class:`KubeError`
with ``temporary`` telling the handler whether to retry with backoff.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import uuid
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError

from cdcflow import naming
from cdcflow_operator.models import API_VERSION, KIND, PLURAL, VERSION

FIELD_MANAGER = naming.OPERATOR

CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
)
"""Kinds of children the operator applies (and lists to find drift and leftovers)."""


class KubeError(Exception):
    """An API call failed; ``temporary`` when retrying may help (5xx, 429, 409, network)."""

    def __init__(self, message: str, *, temporary: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.status = status


def _error(what: str, error: Exception) -> KubeError:
    status = getattr(error, "status", None)
    body = getattr(error, "body", None) or getattr(error, "summary", lambda: "")()
    text = f"{what}: HTTP {status}: {_server_message(body)[:500]}"
    if status == 403:
        text += " (the operator's ServiceAccount lacks this permission: see its ClusterRole)"
    temporary = status is None or status in (409, 429) or status >= 500 or status == 403
    return KubeError(text, temporary=temporary, status=status)


def _server_message(body: Any) -> str:
    """The API server's own sentence from a Status body (what a person reads in
    ``kubectl``), else the body as text."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        parsed = json.loads(body) if isinstance(body, str) else body
    except ValueError:
        return str(body)
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    return str(body)


def api_client(kubeconfig: str | None = None) -> Any:
    """A client: the given kubeconfig, $KUBECONFIG, or the pod's ServiceAccount."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return k8s_config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
    k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


class Cluster:
    """The API calls the operator makes; nothing else in the package makes any."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.core = k8s.CoreV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self._dynamic: DynamicClient | None = None

    @property
    def dynamic(self) -> DynamicClient:
        if self._dynamic is None:
            self._dynamic = DynamicClient(self.api)  # type: ignore[no-untyped-call]
        return self._dynamic

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    # --- children ----------------------------------------------------------------------
    def apply(self, manifest: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply of one child (force: the operator owns its fields)."""
        meta = manifest["metadata"]
        what = f"apply {manifest['kind']} {meta['namespace']}/{meta['name']}"
        try:
            resource = self._resource(manifest["apiVersion"], manifest["kind"])
            kwargs: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
            result = resource.server_side_apply(
                body=manifest,
                name=meta["name"],
                namespace=meta["namespace"],
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                **kwargs,
            )
        except (ApiException, DynamicApiError) as error:
            raise _error(what, error) from None
        return dict(result.to_dict())

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            self._resource(api_version, kind).delete(
                name=name, namespace=namespace, propagation_policy="Background"
            )
        except (ApiException, DynamicApiError) as error:
            if getattr(error, "status", None) != 404:
                raise _error(f"delete {kind} {namespace}/{name}", error) from None

    def list_children(self, namespace: str, pipeline: str) -> list[dict[str, Any]]:
        """Every object of a child kind labelled as this Pipeline's (read only)."""
        selector = f"{naming.PIPELINE_LABEL}={pipeline}"
        found: list[dict[str, Any]] = []
        for api_version, kind in CHILD_KINDS:
            try:
                items = self._resource(api_version, kind).get(
                    namespace=namespace, label_selector=selector
                )
            except (ApiException, DynamicApiError) as error:
                raise _error(f"list {kind} in {namespace}", error) from None
            for item in items.to_dict().get("items", []):
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                found.append(item)
        return found

    def pods(self, namespace: str, selector: dict[str, str]) -> list[Any]:
        text = ",".join(f"{k}={v}" for k, v in selector.items())
        try:
            return list(self.core.list_namespaced_pod(namespace, label_selector=text).items)
        except ApiException as error:
            raise _error(f"list pods in {namespace}", error) from None

    # --- secrets -----------------------------------------------------------------------
    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """A key of a Secret (None when the Secret or key is missing). Never logged."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise _error(f"read Secret {namespace}/{name}", error) from None
        data = secret.data or {}
        if key not in data:
            return None
        return base64.b64decode(data[key]).decode()

    def create_secret(self, manifest: dict[str, Any]) -> bool:
        """Create a Secret once (True when created, False when it exists)."""
        meta = manifest["metadata"]
        try:
            body: Any = manifest  # the client accepts plain dicts
            self.core.create_namespaced_secret(meta["namespace"], body)
        except ApiException as error:
            if error.status == 409:
                return False
            raise _error(f"create Secret {meta['namespace']}/{meta['name']}", error) from None
        return True

    # --- the Pipeline itself -----------------------------------------------------------
    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                naming.GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            )
        except ApiException as error:
            if error.status == 404:
                return  # deleted meanwhile: nothing to report on
            raise _error(f"patch status of Pipeline {namespace}/{name}", error) from None

    def event(
        self, namespace: str, name: str, uid: str, type_: str, reason: str, message: str
    ) -> None:
        """A core Event on the Pipeline (``kubectl describe pl`` shows it)."""
        now = dt.datetime.now(dt.UTC)
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(name=f"{name}.{uuid.uuid4().hex[:12]}", namespace=namespace),
            involved_object=k8s.V1ObjectReference(
                api_version=API_VERSION, kind=KIND, name=name, namespace=namespace, uid=uid
            ),
            type=type_,
            reason=reason,
            message=message[:1000],
            source=k8s.V1EventSource(component=naming.OPERATOR),
            reporting_component=naming.OPERATOR,
            reporting_instance=os.environ.get("HOSTNAME", naming.OPERATOR),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self.core.create_namespaced_event(namespace, body)
        except ApiException as error:
            raise _error(f"record Event {reason} on {namespace}/{name}", error) from None
