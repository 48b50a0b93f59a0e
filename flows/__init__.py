"""Thin Prefect flows over pipeline/ and model/: map shards to tasks, cache keys, artifacts."""

from flows import logs

logs.install()  # in every process that runs our flows: the CLI, the worker's flow runs
