"""A target's keys: scrypt from the passphrase, subkeys by HKDF, and the keyring object.

The keyring is a small JSON object beside the target's prefix (`sync/USER/NAME.keys`, like
the manifest), so every cluster finds what deriving the key again needs: per key id,
scrypt's salt and cost, and a key check value (an HMAC under a subkey of the key; never
the key, never the passphrase). A wrong passphrase fails the check before any object is
read, so it is told apart from a damaged object. Deriving blocks (~0.3 s and 128 MiB):
call it from a worker thread.

A key's entry never leaves the keyring: a key a rekey replaced is kept *retired* (it seals
nothing, but opens what a cluster still holding it wrote after the rekey's last look),
so no object can be left under a key nobody can derive again. Format 1 is a ring with no
retired key, byte for byte what fusesync wrote before retired keys existed; a ring that
retires a key is format 2, which older versions refuse rather than rekey it (their rekey
dropped the old key's entry).
"""

from __future__ import annotations

import base64
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any

from fusesync.crypt.stream import KEY_ID_SIZE
from fusesync.errors import FusesyncError

KEYRING_FORMAT = 2
KEYRING_FORMATS = (1, 2)  # 1: no `retired` list (it is empty)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 17, 8, 1  # 128 MiB, ~0.3 s: OWASP's floor for scrypt
TAG_PREFIX = "k1:"
"""Marks a keyed content tag where an MD5 would stand (manifest, index): never equal to one."""

_CHECK_INFO = b"fusesync v1 key check"
_TAG_INFO = b"fusesync v1 content tag"
_OBJECT_INFO = b"fusesync v1 object key"


class KeyringError(FusesyncError):
    """The keyring object is unreadable or holds values fusesync refuses to use."""


# `cryptography` is imported inside these three: it costs ~10 ms to import, which a run
# that touches no encrypted path (most runs) need not pay.

def _hkdf(master: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(master)


def _hmac(key: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as crypto_hmac

    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def _scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


class TargetKey:
    """A key derived from a passphrase and checked against the keyring. Holds no passphrase."""

    def __init__(self, key_id: bytes, master: bytes) -> None:
        self._id = key_id
        self._master = master
        self._tag_key = _hkdf(master, _TAG_INFO)

    @property
    def key_id(self) -> bytes:
        return self._id

    def object_key(self, salt: bytes) -> bytes:
        """The AES-256 key of the one object whose header carries `salt`."""
        return _hkdf(self._master, _OBJECT_INFO, salt)

    def check_value(self) -> bytes:
        return _hmac(_hkdf(self._master, _CHECK_INFO), b"fusesync key check")

    def content_tag(self, md5_hex: str) -> str:
        """A keyed fingerprint of the plaintext (from its MD5) for the manifest and the
        metadata: equal contents give equal tags under one key, and a reader without the
        key cannot test a guess of the content, as a bare MD5 would let them."""
        return TAG_PREFIX + _hmac(self._tag_key, bytes.fromhex(md5_hex))[:16].hex()


@dataclass(frozen=True)
class KeyParams:
    """What deriving one key again needs, as the keyring stores it."""

    key_id: bytes
    salt: bytes
    check: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def to_json(self) -> dict[str, Any]:
        return {"kdf": "scrypt", "n": self.n, "r": self.r, "p": self.p,
                "salt": _b64(self.salt), "check": _b64(self.check)}

    @classmethod
    def from_json(cls, key_id: bytes, data: Any) -> KeyParams:
        if not isinstance(data, dict) or data.get("kdf") != "scrypt":
            raise KeyringError("the keyring names a key derivation this fusesync does not know")
        n, r, p = data.get("n"), data.get("r"), data.get("p")
        # Bounds, so a keyring written by someone else cannot make us spend gigabytes.
        if not (isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
                and 1 << 14 <= n <= 1 << 20 and n & (n - 1) == 0 and 1 <= r <= 16
                and 1 <= p <= 4):
            raise KeyringError("the keyring's scrypt cost is outside what fusesync accepts")
        return cls(key_id, _unb64(data.get("salt")), _unb64(data.get("check")), n, r, p)


def derive(passphrase: bytes, params: KeyParams) -> TargetKey | None:
    """The key `params` describes, or None when `passphrase` is not its passphrase. Blocks."""
    master = _scrypt(passphrase, params.salt, params.n, params.r, params.p)
    key = TargetKey(params.key_id, master)
    return key if hmac.compare_digest(key.check_value(), params.check) else None


def create(passphrase: bytes) -> tuple[KeyParams, TargetKey]:
    """A new key (fresh id and salt) for `passphrase`. Blocks."""
    key_id, salt = os.urandom(KEY_ID_SIZE), os.urandom(32)
    master = _scrypt(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    key = TargetKey(key_id, master)
    return KeyParams(key_id, salt, key.check_value()), key


@dataclass
class Keyring:
    """A target's keys. `current` seals new objects; `retiring` is the key a rekey is
    replacing (every object is under one of the two until the rekey ends); `retired`
    (oldest first) are keys that rekeys replaced: they seal nothing and stay only to open
    an object sealed by a cluster that still held one when its rekey ended."""

    keys: dict[bytes, KeyParams]
    current: bytes
    retiring: bytes | None = None
    etag: str | None = field(default=None, compare=False)
    retired: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "format": KEYRING_FORMAT if self.retired else 1,
            "current": self.current.hex(),
            "retiring": self.retiring.hex() if self.retiring else None,
            "keys": {kid.hex(): params.to_json() for kid, params in sorted(self.keys.items())},
        }
        if self.retired:
            body["retired"] = [kid.hex() for kid in self.retired]
        return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes, etag: str | None = None) -> Keyring:
        try:
            body = json.loads(data)
            if body.get("format") not in KEYRING_FORMATS:
                raise KeyringError("the keyring is in a format this fusesync does not know: "
                                   "upgrade fusesync")
            keys = {bytes.fromhex(kid): KeyParams.from_json(bytes.fromhex(kid), params)
                    for kid, params in body["keys"].items()}
            current = bytes.fromhex(body["current"])
            retiring = bytes.fromhex(body["retiring"]) if body.get("retiring") else None
            retired = tuple(bytes.fromhex(kid) for kid in body.get("retired") or ())
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise KeyringError(f"the keyring is unreadable ({exc})") from None
        named = [current, *([retiring] if retiring is not None else []), *retired]
        if any(kid not in keys for kid in named):
            raise KeyringError("the keyring names a key it does not hold")
        if len(set(named)) != len(named):
            raise KeyringError("the keyring names a key twice (current, retiring, retired)")
        return cls(keys, current, retiring, etag, retired)

    def state(self, key_id: bytes) -> str | None:
        """'current', 'retiring', 'retired', or None for a key this ring does not hold."""
        if key_id == self.current:
            return "current"
        if key_id == self.retiring:
            return "retiring"
        return "retired" if key_id in self.retired else None

    def rekeyed(self, params: KeyParams) -> Keyring:
        """A rekey's first step: `params` becomes current, the current key retiring."""
        if self.retiring is not None:
            raise KeyringError("internal: a rekey began while another was unfinished")
        return Keyring({**self.keys, params.key_id: params}, params.key_id, self.current,
                       self.etag, self.retired)

    def rekey_done(self) -> Keyring:
        """A rekey's last step: the retiring key is retired, its entry kept."""
        if self.retiring is None:
            raise KeyringError("internal: no rekey to finish")
        return Keyring(self.keys, self.current, None, self.etag, (*self.retired, self.retiring))

    def unlock(self, passphrase: bytes, current_only: bool = False, retired: bool = False
               ) -> TargetKey | None:
        """The key of this ring that `passphrase` opens (the current one first, then the
        retiring one unless `current_only`, then, with `retired`, the retired ones, newest
        first), or None. Blocks: one scrypt per key tried."""
        order = [self.current]
        if self.retiring is not None and not current_only:
            order.append(self.retiring)
        if retired and not current_only:
            order.extend(reversed(self.retired))
        for key_id in order:
            key = derive(passphrase, self.keys[key_id])
            if key is not None:
                return key
        return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise KeyringError("the keyring is unreadable (a salt or check is missing)")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise KeyringError("the keyring is unreadable (bad base64)") from None
