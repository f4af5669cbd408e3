"""The web dashboard: ``liteq dashboard`` (see docs/dashboard.md)."""
