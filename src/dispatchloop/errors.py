"""One small exception hierarchy, so every caller knows what to do with a failure.

- `InputError`: the operator's or the caller's input is wrong (a setting, a
  CLI option, a request, a file). Report it in one sentence; retrying cannot
  help. The CLI exits 2; an HTTP endpoint answers 422.
- `TransientError`: something outside us is unavailable for now (broker,
  database, disk full). Retry with backoff; the scheduler skips the cycle.
- `FatalError`: a bug or a broken invariant (corrupt registry, diverging
  training that must not be retried as is). Stop and say why.

Every module's own errors derive from one of these (module-level aliases are
fine), and `except` clauses name the narrowest class they handle.
"""

from __future__ import annotations


class DispatchloopError(Exception):
    """The root of every error dispatchloop raises on purpose."""


class InputError(DispatchloopError, ValueError):
    """Bad input: report in one sentence, never retry (exit 2, HTTP 422)."""


class TransientError(DispatchloopError):
    """A dependency is unavailable for now: retry with backoff."""


class FatalError(DispatchloopError):
    """A broken invariant: stop and report."""
