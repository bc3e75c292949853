"""Prefect tasks: thin wrappers adding retries, caching, progress and artifacts around prefcurate calls."""
