"""Prefect tasks: each a thin wrapper over one step in :mod:`lstmflow.ops.steps`.

Retries, timeouts and cache policy sit in the decorators; only paths, run ids and
small dicts cross a task boundary.
"""
