"""JSON logs, one object per line, carrying the request id of the request being served."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time

import orjson

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# LogRecord attributes that are not user-supplied `extra` fields.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured duplicate of msg
}


def _timestamp(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int((created - int(created)) * 1000):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class AccessLog:
    """The per-request access log line, written without the logging machinery when it can be.

    Through ``logging`` a line costs a LogRecord, the `extra` merge, the formatter's scan of the
    record's attributes, a strftime and a write system call: ~20 us of the ~350 us a request
    costs the gateway. When the only handler is the JSON one `setup_logging` installed, the same
    JSON object (same keys, same order, request id included) is written straight to its stream,
    the lines of one event-loop turn in one write (so an access line may follow a line logged
    later in the same turn); otherwise (tests' caplog, an embedding application's handlers) it
    goes through ``logging`` as before.
    """

    def __init__(self, name: str = "liftoff.access") -> None:
        self.logger = logging.getLogger(name)
        self._second = -1
        self._prefix = ""
        self._pending: list[str] = []  # lines of this loop turn, bounded by its requests

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, fields: dict[str, object]) -> None:
        handler = _direct_handler
        logger = self.logger
        if (
            handler is None
            or logging.root.handlers != [handler]
            or logger.handlers
            or logger.filters
            or not logger.propagate
        ):
            logger.info("request", extra=fields)
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        entry: dict[str, object] = {
            "ts": f"{self._prefix}.{int((now - second) * 1000):03d}Z",
            "level": "info",
            "logger": logger.name,
            "msg": "request",
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        entry.update(fields)
        self._pending.append(orjson.dumps(entry, default=str).decode())
        if len(self._pending) == 1:
            # One write per event-loop turn for all the requests that finished in it.
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running: write now
                self.flush()

    def flush(self) -> None:
        """Write the lines waiting for the end of this event-loop turn."""
        handler = _direct_handler
        if not self._pending or handler is None:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": text}))
        finally:
            handler.release()


_direct_handler: logging.StreamHandler | None = None  # the handler AccessLog may write through


def setup_logging(level: str = "INFO") -> None:
    """Route the gateway's and uvicorn's loggers through one JSON handler on stderr."""
    global _direct_handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    _direct_handler = handler
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the gateway writes its own access log
    # These log request/response bodies at DEBUG (Secrets Manager answers included): never.
    for chatty in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
