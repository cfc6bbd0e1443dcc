"""Prefect tasks: each a thin wrapper over one function of :mod:`lstmflow.ops` (a step in :mod:`lstmflow.ops.steps`,
or the gate in :mod:`lstmflow.ops.gate`).

Retries, timeouts and cache policy sit in the decorators; only paths, run ids and
small dicts cross a task boundary.
"""
