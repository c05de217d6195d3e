"""The access log's direct path writes the very JSON line the logging path would."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging

import orjson

from app import log as log_mod
from app.log import AccessLog, JsonFormatter, request_id, setup_logging

FIELDS = {"method": "POST", "route": "chat", "status": 200, "model": "m", "ms": 1.5}


@contextlib.contextmanager
def json_logging():
    """setup_logging's handlers only (pytest's own removed), writing into a StringIO."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, log_mod._direct_handler
    setup_logging("INFO")
    stream = io.StringIO()
    log_mod._direct_handler.setStream(stream)
    token = request_id.set("req-1")
    try:
        yield stream
    finally:
        request_id.reset(token)
        root.handlers[:], level, log_mod._direct_handler = saved
        root.setLevel(level)


def test_direct_line_matches_the_formatter():
    with json_logging() as stream:
        AccessLog().write(dict(FIELDS))  # no loop running: written at once
        direct = orjson.loads(stream.getvalue())
        record = logging.makeLogRecord(
            {"name": "liftoff.access", "levelno": logging.INFO, "levelname": "INFO"}
        )
        record.msg = "request"
        record.__dict__.update(FIELDS)
        expected = orjson.loads(JsonFormatter().format(record))
    assert list(direct) == list(expected)  # same keys in the same order
    assert direct["ts"].endswith("Z") and len(direct["ts"]) == len(expected["ts"])
    assert {k: v for k, v in direct.items() if k != "ts"} == {
        k: v for k, v in expected.items() if k != "ts"
    }
    assert direct["request_id"] == "req-1"


async def test_other_handlers_get_log_records(caplog):
    with json_logging() as stream:
        logging.getLogger().addHandler(caplog.handler)
        AccessLog().write(dict(FIELDS))
        written = stream.getvalue()  # through logging: at once
    records = [r for r in caplog.records if r.name == "liftoff.access"]
    assert len(records) == 1 and records[0].route == "chat"
    assert orjson.loads(written)["route"] == "chat"  # and the JSON line too


def test_disabled_below_info():
    with json_logging():
        logging.getLogger().setLevel(logging.WARNING)
        assert not AccessLog().enabled()


async def test_lines_of_one_loop_turn_are_written_together():
    with json_logging() as stream:
        access = AccessLog()
        access.write(dict(FIELDS))
        access.write({**FIELDS, "status": 404})
        assert stream.getvalue() == ""  # not yet: at the end of this loop turn
        await asyncio.sleep(0)
        lines = stream.getvalue().splitlines()
        assert [orjson.loads(line)["status"] for line in lines] == [200, 404]
        access.write(dict(FIELDS))
        access.flush()  # what the gateway does when it closes
        assert len(stream.getvalue().splitlines()) == 3
