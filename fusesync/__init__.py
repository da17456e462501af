"""fusesync: keep home and data directories in step with an S3 prefix."""

__version__ = "0.1.0"  # the one place; pyproject.toml reads it from here
