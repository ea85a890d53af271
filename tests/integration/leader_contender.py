"""A minimal leader contender for tests: polls a LeaderElector and writes its status.

Usage: python leader_contender.py STORE_URL STATUS_FILE INSTANCE_ID
The status file holds "leader <epoch>" or "follower" after every poll (atomic rename).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from dispatchloop.daemon.cycles import CycleStore, engine_of
from dispatchloop.daemon.leader import LeaderElector, lock_for
from dispatchloop.replay import open_store


def main() -> None:
    url, status_path, instance = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    store = open_store(url)
    elector = LeaderElector(lock_for(url), CycleStore(engine_of(store)), instance)
    while True:
        status = elector.poll()
        text = f"leader {status.epoch}" if status.leader else "follower"
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(f"{text} {os.getpid()}\n")
        tmp.replace(status_path)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
