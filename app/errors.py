"""Internal error types, and the one mapping from them to what a client sees.

Modules raise the internal types below (they may carry internal detail for logs). Only
:func:`to_api_error` decides the client-facing status and OpenAI-shaped body, so stack traces,
hostnames, internal names, key hashes and the provider key can never leak through an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

# --- quoting client input ----------------------------------------------------------------------

# A quoted client value is cut to this many characters: enough for any real model name (a
# fine-tuned "ft:<base>:<org>:<suffix up to 64>:<id>" stays under it), small enough that a hostile
# 100 KB value is not reflected back (response size, log volume, reflected-content abuse).
ECHO_MAX_CHARS = 128
# Backstops for whole messages and params, including the provider's own 4xx text, which may quote
# a forwarded client value at any length.
MESSAGE_MAX_CHARS = 1024
PARAM_MAX_CHARS = 128


def clip(text: str, limit: int = ECHO_MAX_CHARS) -> str:
    """``text`` whole when it fits in ``limit`` characters, else its prefix and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def echo(value: object) -> str:
    """A client-supplied value as an error message quotes it: a string as is, others by repr,
    bounded by :data:`ECHO_MAX_CHARS`."""
    return clip(value if isinstance(value, str) else repr(value))


# --- internal errors ---------------------------------------------------------------------------


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class InvalidRequest(GatewayError):
    """The client's request is malformed or out of range (400)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ModelNotFound(GatewayError):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


class PayloadTooLarge(GatewayError):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class UnsupportedMediaType(GatewayError):
    pass


class AuthenticationFailed(GatewayError):
    """No key, or a key that matches none configured."""


class PermissionDenied(GatewayError):
    """A valid key without the right (e.g. admin routes)."""


class RouteNotFound(GatewayError):
    pass


class MethodNotAllowed(GatewayError):
    pass


class RateLimited(GatewayError):
    """Our own limits refused the request; headers carry x-ratelimit-* and Retry-After."""

    def __init__(self, reason: str, retry_after_s: float, headers: dict[str, str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.headers = headers


class RequestTooLarge(GatewayError):
    """More tokens than the key's tokens-per-minute limit admits at once: no retry can succeed."""

    def __init__(self, limit: int, burst: int, requested: int) -> None:
        super().__init__(requested)
        self.limit = limit
        self.burst = burst
        self.requested = requested


class ContentFlagged(GatewayError):
    """The moderation check flagged the input."""


class NotReady(GatewayError):
    """The gateway is starting or draining."""


class UpstreamError(GatewayError):
    """The provider answered with an error status after retries (or one we do not retry)."""

    def __init__(
        self,
        status: int,
        body: dict | None = None,
        retry_after_s: float | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(f"upstream status {status} {detail}".strip())
        self.status = status
        self.body = body or {}
        self.retry_after_s = retry_after_s


class UpstreamTimeout(GatewayError):
    pass


class UpstreamUnreachable(GatewayError):
    pass


class CircuitOpen(GatewayError):
    def __init__(self, model: str, retry_after_s: float) -> None:
        super().__init__(model)
        self.model = model
        self.retry_after_s = retry_after_s


class Overloaded(GatewayError):
    """Shed before any provider call: the model's line for a concurrency slot was longer than it
    drains in ``upstream.queue_timeout_s`` (reason ``drain``), or the wait ran out (``timeout``)."""

    def __init__(self, model: str, retry_after_s: float, reason: str) -> None:
        super().__init__(f"{model}: {reason}")
        self.model = model
        self.retry_after_s = retry_after_s
        self.reason = reason


class StreamInterrupted(GatewayError):
    """The provider's stream broke after bytes had gone to the client."""


class StateUnavailable(GatewayError):
    """Limits are configured to fail closed and Redis is unavailable."""


class OwnersUnavailable(StateUnavailable):
    """The owner records of stored objects are unavailable (Redis down): refused, never leaked."""


class ObjectNotFound(GatewayError):
    """A stored object the key may not reach: answered as the provider's 404 for an unknown id
    (app/object_owners.py), so that another key's object is not revealed to exist."""

    def __init__(self, status: int, message: str, param: str | None, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


# --- what the client sees ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiError:
    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def payload(self) -> dict:
        return {
            "error": {
                "message": clip(self.message, MESSAGE_MAX_CHARS),
                "type": self.type,
                "param": None if self.param is None else clip(self.param, PARAM_MAX_CHARS),
                "code": self.code,
            }
        }


def _retry_after(seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return {}
    return {"retry-after": str(max(1, int(seconds + 0.999)))}


def _upstream_client_error(exc: UpstreamError) -> ApiError:
    """A provider 4xx is the client's problem: pass on only the four public fields."""
    err = exc.body.get("error") if isinstance(exc.body.get("error"), dict) else {}

    def text(key: str) -> str | None:
        value = err.get(key)
        return value if isinstance(value, str) else None

    return ApiError(
        exc.status,
        text("message") or "the provider rejected the request",
        text("type") or "invalid_request_error",
        text("param"),
        text("code"),
    )


def to_api_error(exc: BaseException) -> ApiError:
    """The single mapping from any exception to a client-facing error."""
    match exc:
        case InvalidRequest():
            return ApiError(400, exc.message, "invalid_request_error", exc.param, exc.code)
        case ModelNotFound():
            return ApiError(
                404,
                f"The model '{echo(exc.model)}' does not exist or you do not have access to it.",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        case PayloadTooLarge():
            return ApiError(
                413,
                f"Request body too large: the limit is {exc.limit} bytes.",
                "invalid_request_error",
                None,
                "request_too_large",
            )
        case UnsupportedMediaType():
            return ApiError(
                415,
                "Unsupported content type: send the body as application/json.",
                "invalid_request_error",
                None,
                "unsupported_media_type",
            )
        case AuthenticationFailed():
            return ApiError(
                401,
                "Incorrect API key provided. Send 'Authorization: Bearer <key>' with a key issued "
                "by this gateway's operator.",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )
        case PermissionDenied():
            return ApiError(
                403, "This key is not allowed to use this route.", "permission_error", None, None
            )
        case RouteNotFound():
            return ApiError(404, "Unknown route.", "invalid_request_error", None, "unknown_url")
        case MethodNotAllowed():
            return ApiError(
                405, "Method not allowed on this route.", "invalid_request_error", None, None
            )
        case RequestTooLarge():
            return ApiError(
                429,
                f"Request too large for tokens per min (TPM) on this key: Limit {exc.limit}, at "
                f"most {exc.burst} at once, Requested {exc.requested} (the prompt and the "
                "completion cap). The input or output tokens must be reduced in order to run "
                "successfully.",
                "tokens",
                None,
                "rate_limit_exceeded",
            )
        case RateLimited():
            headers = dict(exc.headers) | _retry_after(exc.retry_after_s)
            if exc.reason.startswith("budget"):
                scope = "global" if exc.reason == "budget_global" else "this key's"
                return ApiError(
                    429,
                    f"You exceeded {scope} monthly budget: the request's worst-case cost does not "
                    "fit in what remains.",
                    "insufficient_quota",
                    None,
                    "insufficient_quota",
                    headers,
                )
            kind = "tokens" if exc.reason == "rate_limit_tokens" else "requests"
            return ApiError(
                429,
                f"Rate limit reached for {kind} per minute on this key. "
                f"Retry after {headers.get('retry-after', '1')} s.",
                kind,
                None,
                "rate_limit_exceeded",
                headers,
            )
        case ContentFlagged():
            return ApiError(
                400,
                "The input was flagged by the moderation check and was not sent to the model.",
                "invalid_request_error",
                None,
                "content_policy_violation",
            )
        case NotReady():
            return ApiError(503, "The gateway is not ready.", "server_error", None, "not_ready")
        case ObjectNotFound():
            return ApiError(exc.status, exc.message, "invalid_request_error", exc.param, exc.code)
        case OwnersUnavailable():
            return ApiError(
                503,
                "Stored-object state is unavailable; try again shortly.",
                "server_error",
                None,
                "service_unavailable",
                {"retry-after": "1"},
            )
        case StateUnavailable():
            return ApiError(
                503,
                "Rate-limit state is unavailable; try again shortly.",
                "server_error",
                None,
                "service_unavailable",
                {"retry-after": "1"},
            )
        case CircuitOpen():
            return ApiError(
                503,
                "The model is temporarily unavailable (the provider failed repeatedly); "
                "try again shortly.",
                "server_error",
                None,
                "upstream_unavailable",
                _retry_after(exc.retry_after_s),
            )
        case Overloaded():
            # 503 as OpenAI's own "overloaded" answer (and Envoy's overflow): the gateway's
            # capacity, not this client's rate; the SDKs retry it after Retry-After.
            return ApiError(
                503,
                "The model is overloaded: more requests are waiting for it than it can serve in "
                "time. Retry after the Retry-After delay.",
                "server_error",
                None,
                "overloaded",
                _retry_after(exc.retry_after_s),
            )
        case UpstreamError() if exc.status == 429:
            return ApiError(
                429,
                "The provider is rate limiting this gateway; try again shortly.",
                "requests",
                None,
                "rate_limit_exceeded",
                _retry_after(exc.retry_after_s or 1),
            )
        case UpstreamError() if 400 <= exc.status < 500 and exc.status != 401:
            return _upstream_client_error(exc)
        case UpstreamError():
            return ApiError(
                502, "The provider returned an error.", "server_error", None, "upstream_error"
            )
        case UpstreamTimeout():
            return ApiError(
                504,
                "The provider did not answer in time.",
                "server_error",
                None,
                "upstream_timeout",
            )
        case UpstreamUnreachable():
            return ApiError(
                502, "The provider could not be reached.", "server_error", None, "upstream_error"
            )
        case StreamInterrupted():
            return ApiError(
                502,
                "The provider's stream was interrupted before it finished.",
                "server_error",
                None,
                "stream_interrupted",
            )
    return ApiError(500, "Internal error in the gateway.", "server_error", None, "internal_error")
