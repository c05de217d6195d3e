"""Offline validation of every rendered object: Kubernetes JSON schemas, or the kept CRD schemas."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from tests.charts import crds

# The EKS version the stacks default to; kubernetes-validate picks the newest schema set <= this.
KUBERNETES_VERSION = "1.33.0"


def validate_object(obj: dict[str, Any], kubernetes_version: str = KUBERNETES_VERSION) -> None:
    """Raise when `obj` is invalid; never silently pass an object no schema covers."""
    if crds.has_schema(obj):
        crds.validate(obj)
        return
    kubernetes_validate.validate(obj, kubernetes_version, strict=True)


def validate_all(
    objects: list[dict[str, Any]], kubernetes_version: str = KUBERNETES_VERSION
) -> None:
    problems = []
    for obj in objects:
        try:
            validate_object(obj, kubernetes_version)
        except Exception as exc:  # collect every failure with the object it belongs to
            where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            problems.append(f"{where}: {type(exc).__name__}: {getattr(exc, 'message', exc)}")
    assert not problems, "invalid rendered objects:\n" + "\n".join(problems)
