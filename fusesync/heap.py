"""The cyclic garbage collector, set for runs that move thousands of files.

A pull or push allocates a few small objects per file (rows, request state, trio's
bookkeeping) and keeps the index's rows and the plan alive for the whole run. With
CPython's default thresholds the collector ran a young collection every 700 allocations
and, every so often, a full one that walked every object the imports had made (~32,000
tracked ones: functions, classes, their dicts) and every row the run holds: 4-5% of a
pull's CPU on this 2-core machine, profiled with perf. Objects made before the run are
frozen out of the collector's sight (they live until exit anyway), and young collections
run ten times less often; cycles are still collected.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 10_000
"""Allocations (net of frees) between young collections; CPython's default is 700."""


@contextmanager
def settled() -> Iterator[None]:
    """For the block: what exists now (imports, settings) frozen, young collections
    spaced out. Enter once the modules a run needs are imported. On the way out both are
    undone, so a caller that runs commands in its own process (the tests' CliRunner)
    leaks nothing: frozen, the garbage of earlier runs (sockets, databases) would stay."""
    thresholds = gc.get_threshold()
    gc.freeze()  # no collection first: a full one costs ~12 ms, more than imports leave
    gc.set_threshold(YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def leave_to_exit() -> None:
    """The process is about to end: freeze what is left, so that the interpreter's last
    collections on the way out walk none of it (10-14 ms of each command; trio's imports
    alone leave ~9 ms of it). Everything is still freed by reference counting, files are
    closed and atexit handlers run; only garbage in cycles is left to the OS, as at any
    exit. For the console script alone: a process that goes on must not call it."""
    gc.freeze()
