"""What to change: a pure diff of desired children and observed ones.

``plan(desired, observed, owned)`` returns actions; applying them is
:mod:`cdcflow_operator.kube`'s work. A child is re-applied when it is missing or when
any field the operator sets differs from the live object (drift: edited or scaled by
hand); fields the server or other controllers add are not drift. Children the
Pipeline owns that are no longer desired (an old schema Job, a managed broker
replaced by an external one) are deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kubernetes.utils import parse_quantity

from cdcflow_operator.manifests import Manifest

Key = tuple[str, str]


@dataclass(frozen=True)
class Action:
    verb: Literal["create", "repair", "delete"]
    kind: str
    name: str
    why: str
    manifest: Manifest | None = None
    api_version: str = ""

    def describe(self) -> str:
        return f"{self.verb} {self.kind} {self.name}: {self.why}"


def drift(desired: Any, live: Any, path: str = "") -> str | None:
    """The first path where ``live`` does not carry what ``desired`` says (None: in sync).

    Subset semantics: ``live`` may have more keys (server defaults, status, other
    managers' fields); lists must match element by element.
    """
    if desired in ({}, []) and live in (None, {}, []):
        return None  # the server omits empty lists and maps
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return path or "."
        for key, value in desired.items():
            if key == "stringData":
                continue
            found = drift(value, live.get(key), f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return path
        for i, (want, have) in enumerate(zip(desired, live, strict=True)):
            found = drift(want, have, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if desired != live and str(desired) != str(live) and not _same_quantity(path, desired, live):
        return path
    return None


def _same_quantity(path: str, desired: Any, live: Any) -> bool:
    """Quantities the server has normalised are not drift: it stores ``0.5`` as ``500m``,
    ``1024Mi`` as ``1Gi`` and ``1000m`` as ``1``, so comparing strings would re-apply such
    a child on every tick. Only resource requests/limits and storage are quantities."""
    parts = path.split(".")
    if not (len(parts) >= 2 and parts[-2] in ("requests", "limits")) and parts[-1] != "storage":
        return False
    try:
        return bool(parse_quantity(desired) == parse_quantity(live))  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        return False


def key_of(manifest: Manifest) -> Key:
    return manifest["kind"], manifest["metadata"]["name"]


def plan(
    desired: list[Manifest],
    observed: dict[Key, dict[str, Any]],
    owned: dict[Key, dict[str, Any]],
) -> list[Action]:
    """Actions that bring the observed children to the desired ones, in apply order."""
    actions: list[Action] = []
    wanted = {key_of(m) for m in desired}
    for manifest in desired:
        kind, name = key_of(manifest)
        live = observed.get((kind, name))
        if live is None:
            actions.append(Action("create", kind, name, "missing", manifest))
            continue
        where = drift({k: v for k, v in manifest.items() if k != "status"}, live)
        if where is not None:
            actions.append(
                Action("repair", kind, name, f"differs at {where.lstrip('.')}", manifest)
            )
    for (kind, name), live in owned.items():
        if (kind, name) not in wanted and kind != "PersistentVolumeClaim":
            actions.append(
                Action("delete", kind, name, "no longer desired", None, live.get("apiVersion", ""))
            )
    return actions
