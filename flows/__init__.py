"""Prefect flows composing the tasks, and the `prefcurate` CLI."""
