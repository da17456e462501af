"""Client-side encryption of chosen paths: the object format, the target's keys, and where
a passphrase comes from. Pure: no remote and no index here (sync/sealed.py moves the
objects); nothing here stores a passphrase or a key.
"""


import importlib

# What stream.py and keys.py import lazily, so that runs sealing nothing skip ~10 ms.
_PRIMITIVES = (
    "cryptography.exceptions",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.hashes",
    "cryptography.hazmat.primitives.hmac",
    "cryptography.hazmat.primitives.kdf.hkdf",
    "cryptography.hazmat.primitives.kdf.scrypt",
)


def preload() -> None:
    """Import the `cryptography` primitives now rather than at first use. The mount daemon
    calls this before it mounts: an import once mounted could read through its own mount
    and wait on itself."""
    for name in _PRIMITIVES:
        importlib.import_module(name)
