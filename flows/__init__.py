"""Thin Prefect flows over pipeline/ and model/: map shards to tasks, cache keys, artifacts."""
