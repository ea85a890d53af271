"""Typed stages of a learning cycle: fit the scenario, (tune), train, and run one in a child.

Each stage is a function with a frozen request in and a frozen result out; the
store, stop flag and progress reporter are injected, `Settings` never reaches
inside, and no stage changes process-wide state (threads, GC, logging, signals):
the entry point — the CLI, the daemon, or the child process of `child.py` —
does. The judge and the registry are the injected protocols of
`dispatchloop.daemon.scheduler` until their own packages land.
"""
