"""Every `liftoff:` config key (plus `aws:region`) as one typed, validated, documented model.

The program reads config once at the edge (`load_settings`) and passes `StackSettings` down typed.
Invalid config fails before any resource is declared, with one line per problem:
`liftoff:<key> = <value>: <what is allowed>`.

`python -m infra.settings --markdown` prints the reference table kept in docs/configuration.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from infra.instance_types import is_arm
from infra.quantities import CPU_RE, MEMORY_RE
from infra.reference_docs import configuration_reference
from infra.settings_checks import (
    EMAIL_RE,
    IAM_PRINCIPAL_ARN_RE,
    INSTANCE_TYPE_RE,
    TAG_KEY_RE,
    cross_field_problems,
    field_problems,
    field_value_ok,
)
from infra.settings_model import (
    ACM_ARN_RE,
    CACHE_NODE_TYPE_RE,
    CLUSTER_LOG_TYPES,
    ENVIRONMENT_DEFAULTS,
    ENVIRONMENTS,
    FIELDS,
    IAM_ROLE_ARN_RE,
    IMAGE_RE,
    K8S_VERSION_RE,
    KEY_TO_FIELD,
    LOG_RETENTION_DAYS,
    NAME_RE,
    PROJECT,
    SECRET_KEYS,
    TWO_AZ_REGIONS,
    US_REGIONS,
    VPA_MODES,
    StackSettings,
    allowed_text,
    config_key,
    shown_value,
)

# This module loads settings from a stack's config. The model is infra/settings_model.py, its
# checks infra/settings_checks.py, the reference page infra/reference_docs.py; the names other
# code has always imported from here stay importable from here.
__all__ = [
    "ACM_ARN_RE",
    "CACHE_NODE_TYPE_RE",
    "CLUSTER_LOG_TYPES",
    "CPU_RE",
    "EMAIL_RE",
    "ENVIRONMENTS",
    "ENVIRONMENT_DEFAULTS",
    "IAM_PRINCIPAL_ARN_RE",
    "IAM_ROLE_ARN_RE",
    "IMAGE_RE",
    "INSTANCE_TYPE_RE",
    "K8S_VERSION_RE",
    "KEY_TO_FIELD",
    "LOG_RETENTION_DAYS",
    "MEMORY_RE",
    "NAME_RE",
    "PROJECT",
    "REPO_ROOT",
    "SECRET_KEYS",
    "TAG_KEY_RE",
    "TWO_AZ_REGIONS",
    "US_REGIONS",
    "VPA_MODES",
    "SettingsError",
    "StackSettings",
    "config_key",
    "is_arm",
    "load_settings",
    "load_stack_file",
    "main",
    "read_stack_config",
    "reference_markdown",
    "settings_from_pulumi",
    "stack_file",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """Invalid stack config; `problems` holds one `key = value: allowed` line per failure."""

    def __init__(self, problems: list[str], header: str | None = None) -> None:
        self.problems = problems
        count = len(problems)
        header = (
            header or f"invalid Liftoff stack config ({count} problem{'s' if count != 1 else ''}):"
        )
        super().__init__("\n".join([header, *(f"  {p}" for p in problems)]))


# One validator per field (type + the Field's own constraints) so every bad key is reported.
_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(Annotated[(info.annotation, Field(), *info.metadata)])  # type: ignore[misc]
    for name, info in FIELDS.items()
}


def _coerce_raw(field_name: str, value: object) -> object:
    """Config values from the CLI are strings: decode JSON for structured fields."""
    annotation = str(FIELDS[field_name].annotation)
    if isinstance(value, str) and (
        annotation.startswith(("list", "dict")) or "list[" in annotation
    ):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def load_settings(config: Mapping[str, object], stack: str) -> StackSettings:
    """Validate a flat `{"aws:region": ..., "liftoff:<key>": ...}` dict.

    Raises SettingsError listing every problem at once.
    """
    problems: list[str] = []
    raw: dict[str, Any] = {}
    for key, value in config.items():
        if not key.startswith(f"{PROJECT}:") and key != "aws:region":
            continue  # other providers' config (aws:profile, kubernetes:...) is not ours
        field = KEY_TO_FIELD.get(key)
        if field is None:
            problems.append(
                f"{key} = {shown_value(key, value)}: unknown key; see docs/configuration.md"
            )
            continue
        if value is None:
            continue
        raw[field] = value

    environment = raw.get("environment", stack if stack in ENVIRONMENTS else "dev")
    # A stack named dev, staging or prod is that environment: `liftoff:environment=dev` on the
    # prod stack would switch prod's defaults and prod-only policies off.
    if stack in ENVIRONMENTS and environment in ENVIRONMENTS and environment != stack:
        problems.append(
            f"{PROJECT}:environment = {environment}: must equal the stack name ({stack}); "
            "a stack named dev, staging or prod is that environment (choose freely on stacks "
            "with other names)"
        )
    for alias, default in ENVIRONMENT_DEFAULTS.get(str(environment), {}).items():
        field = KEY_TO_FIELD[f"{PROJECT}:{alias}"]
        raw.setdefault(field, default)
    raw.setdefault("environment", environment)

    valid: dict[str, Any] = {}
    for field, value in raw.items():
        key = config_key(field)
        try:
            typed = _ADAPTERS[field].validate_python(_coerce_raw(field, value))
            ok = field_value_ok(field, typed)
        except ValidationError:
            ok = False
        if not ok:
            problems.extend(
                field_problems(field, _coerce_raw(field, value))
                or [f"{key} = {shown_value(key, value)}: {allowed_text(field)}"]
            )
            continue
        valid[field] = typed
    problems.extend(cross_field_problems({**_defaults(), **valid}, raw, stack))
    if problems:
        raise SettingsError(problems)
    settings = StackSettings(**valid)
    settings._stack = stack
    return settings


def _defaults() -> dict[str, Any]:
    return {name: f.get_default(call_default_factory=True) for name, f in FIELDS.items()}


def stack_file(stack: str) -> Path:
    return REPO_ROOT / f"Pulumi.{stack}.yaml"


def read_stack_config(stack: str) -> dict[str, object]:
    """The `config:` map of Pulumi.<stack>.yaml (secure values are ciphertext: left out)."""
    path = stack_file(stack)
    if not path.exists():
        known = sorted(p.name.split(".")[1] for p in REPO_ROOT.glob("Pulumi.*.yaml"))
        raise SettingsError([f"stack = {stack}: no {path.name}; known stacks: {', '.join(known)}"])
    document = yaml.safe_load(path.read_text()) or {}
    config = document.get("config") or {}
    return {key: value for key, value in config.items() if not _holds_secure(value)}


def _holds_secure(value: object) -> bool:
    """A `secure:` ciphertext, or a map holding one (`pulumi config set --secret --path`)."""
    if isinstance(value, dict):
        return "secure" in value or any(_holds_secure(v) for v in value.values())
    return False


def load_stack_file(stack: str, overrides: Mapping[str, str] | None = None) -> StackSettings:
    """Settings of Pulumi.<stack>.yaml plus `overrides` (key -> value), without Pulumi."""
    config = read_stack_config(stack)
    config.update(overrides or {})
    return load_settings(config, stack)


def settings_from_pulumi() -> StackSettings:
    """Settings from the running Pulumi program's config (CLI or mocks)."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    flat: dict[str, object] = {}
    known = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    for key in set(known) | set(KEY_TO_FIELD):
        value = runtime_config.get_config(key)
        if value is not None:
            flat[key] = value
    return load_settings(flat, pulumi.get_stack())


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md) of the dev, staging and prod stacks."""
    return configuration_reference({s: read_stack_config(s) for s in ENVIRONMENTS})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.settings", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print the configuration reference")
    parser.add_argument("--stack", help="validate Pulumi.<stack>.yaml and print its settings")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(reference_markdown())
        return 0
    if args.stack:
        try:
            settings = load_stack_file(args.stack)
        except SettingsError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(settings.model_dump_json(indent=2, by_alias=True))
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
