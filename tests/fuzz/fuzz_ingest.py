"""Coverage-guided fuzz target (atheris) for ingest's handling of one record.

Invariant: classified, never raised. For any bytes, screening (the fast path), the
models (`parse_outcome`) and the store write give a verdict without an exception,
and they agree: the fast path accepts exactly what the models accept, with the same
keys and the same reason when they refuse; what both accept the store either holds
or refuses as the record's fault (StoreRejectedError, isolated by the loop), never
with any other exception.

    python tests/fuzz/fuzz_ingest.py -max_total_time=30 tests/fuzz/corpus   # grows it
    python tests/fuzz/fuzz_ingest.py -runs=0 tests/fuzz/corpus              # replay only

tests/unit/test_fuzz_ingest.py runs it for a bounded time on a copy of the corpus.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from typing import Any

import atheris
import msgspec  # noqa: F401 - imported first so that only dispatchloop's code is instrumented
import pydantic  # noqa: F401
import sqlalchemy  # noqa: F401

with atheris.instrument_imports():
    from dispatchloop.events import DispatchOutcomeEvent, Rejection, parse_outcome
    from dispatchloop.screening import screen_outcome

from dispatchloop.consumers.deadletter import DeadLetter
from dispatchloop.consumers.loop import write_isolating
from dispatchloop.replay import IncomingEvent, open_store

LIMIT = 65_536
_STORE = open_store(f"sqlite:///{tempfile.mkdtemp(prefix='dispatchloop-fuzz-')}/replay.db")


class _Record:
    topic, partition, offset, key = "fuzz", 0, 0, None

    def __init__(self, value: bytes) -> None:
        self.value = value


def _keys(event: Any) -> tuple[Any, ...]:
    moment = event.decided_at
    return (event.event_id, event.episode_id, event.step, moment, moment.utcoffset())


def test_one_input(data: bytes) -> None:
    screened = screen_outcome(data, LIMIT)
    model = parse_outcome(data, LIMIT)
    if isinstance(model, Rejection):
        assert screened == model, (screened, model)
        return
    assert isinstance(model, DispatchOutcomeEvent)
    assert not isinstance(screened, Rejection), (screened, model)
    assert _keys(screened) == _keys(model)
    written = write_isolating(_STORE, [IncomingEvent(screened, data)], [_Record(data)])
    assert written.stored + written.duplicates + len(written.refused) == 1, written
    for letter in written.refused:
        assert isinstance(letter, DeadLetter) and letter.reason == "unstorable"


# Values a hostile producer would try in any field; JSON-aware mutation reaches the
# models and the store, where byte flips alone mostly stop at "invalid JSON".
_TRICKY: list[Any] = [
    True,
    False,
    None,
    0,
    -1,
    1,
    2,
    3,
    4,
    2**31,
    2**63,
    -(2**63),
    1e308,
    -0.0,
    0.5,
    1.0000001,
    "",
    "0",
    "1",
    "true",
    "d-0",
    "d-1",
    "\u0000",
    "a\u0000b",
    "\ud800",
    "\udfff\ud800",
    "é",
    "x" * 257,
    "2026-11-23T06:00:00Z",
    "2026-11-23T06:00:00+25:00",
    "2026-02-30T06:00:00Z",
    "12345678123456781234567812345678",
    [],
    {},
    [[[[[]]]]],
    {"lat": 0.0, "lon": 0.0},
]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _mutate_json(document: Any, rng: random.Random) -> bytes:
    """Set one random field (or add one) to a tricky value; serialise in a random style."""
    path = rng.choice(_paths(document)[1:] or [("extra",)])
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    value = rng.choice(_TRICKY)
    if isinstance(parent, list) or rng.random() < 0.8:
        parent[path[-1]] = value
    else:
        parent[f"{path[-1]}_"] = value
    style = rng.randrange(4)
    text = json.dumps(
        document, ensure_ascii=style == 1, indent=2 if style == 2 else None, allow_nan=True
    )
    raw = text.encode("utf-8", "surrogatepass")
    if style == 3 and len(raw) > 2:  # a duplicate of the first key at the end
        first = next(iter(document), None) if isinstance(document, dict) else None
        if first is not None:
            raw = raw[:-1] + b", " + json.dumps({first: value})[1:].encode("utf-8", "surrogatepass")
    return raw


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5:
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            document = None
        if isinstance(document, dict | list) and document:
            return _mutate_json(document, rng)[:max_size]
    return bytes(atheris.Mutate(data, max_size))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
