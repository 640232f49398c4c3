"""Polling waits for tests: no fixed sleeps, a clear message naming what never happened. One implementation,
shared with hack/ (the local cluster and the demo)."""

from hack.localcluster.procs import TransientError, WaitTimeoutError, wait_for

__all__ = ["TransientError", "WaitTimeoutError", "wait_for"]
