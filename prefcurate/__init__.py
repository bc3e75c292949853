"""prefcurate: model-aware preference-data curation (core library, never imports prefect)."""

__version__ = "0.1.0"
