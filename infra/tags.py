"""The one place tags are built: project, environment, managed-by, plus the user's tags."""

from __future__ import annotations

from collections.abc import Mapping

from infra.settings import PROJECT, StackSettings


def base_tags(settings: StackSettings) -> dict[str, str]:
    """Tags every taggable resource carries (user tags cannot override the required ones)."""
    return {
        **settings.tags,
        "project": PROJECT,
        "environment": settings.environment,
        "managed-by": "pulumi",
        "liftoff:stack": settings.prefix,
    }


def tags(
    settings: StackSettings, name: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Tags for one resource: base tags, its Name, and resource-specific ones."""
    return {**base_tags(settings), "Name": name, **(extra or {})}
