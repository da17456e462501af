"""The FUSE mount: an overlay of the target's directory and its remote-only entries.

The core (namespace, overlay, journal, fetch) knows nothing of pyfuse3; adapter.py turns
pyfuse3 requests into calls on it, and daemon.py runs the mount's lifetime.
"""
