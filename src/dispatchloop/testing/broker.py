"""The local tansu broker of the tests: the demo's embedded broker (`dispatchloop.demo.broker`).

Re-exported so tests and benchmarks keep one import path; production code imports
`dispatchloop.demo.broker` itself and never this package.
"""

from dispatchloop.demo.broker import (
    READY_MARKER,
    BrokerMissingError,
    BrokerStartError,
    LocalBroker,
    broker_binary,
    free_port,
    running_broker,
    start_broker,
)

__all__ = [
    "READY_MARKER",
    "BrokerMissingError",
    "BrokerStartError",
    "LocalBroker",
    "broker_binary",
    "free_port",
    "running_broker",
    "start_broker",
]
