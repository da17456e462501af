"""fusesync: keep home and data directories in step with an S3 prefix."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fusesync")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
