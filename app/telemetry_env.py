"""Whether the environment asks for OpenTelemetry export, read without importing the SDK.

Kept apart from app/telemetry.py so a gateway with telemetry off (the default) never imports the
OpenTelemetry SDK and its exporters (about 0.3 s of start-up and a few MiB per worker).
"""

from __future__ import annotations

from collections.abc import Mapping


def flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def signal_endpoint(env: Mapping[str, str], signal: str) -> str | None:
    """Where one signal goes: its own variable (a full URL), else the base one + /v1/<signal>;
    None when neither is set or the signal's exporter is ``none``."""
    if env.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower() == "none":
        return None
    own = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if own:
        return own
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return f"{base.rstrip('/')}/v1/{signal}" if base else None


def telemetry_requested(env: Mapping[str, str]) -> bool:
    """On when a traces or metrics endpoint is set and ``OTEL_SDK_DISABLED`` is not ``true``."""
    if flag(env, "OTEL_SDK_DISABLED"):
        return False
    return signal_endpoint(env, "traces") is not None or signal_endpoint(env, "metrics") is not None
