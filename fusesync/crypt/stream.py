"""The encrypted object format: a short header, then AES-256-GCM over fixed-size chunks.

Version 1, integers big-endian:

    magic      8 bytes   b"FUSESYNC"
    version    1 byte    1
    chunk      1 byte    log2 of the plaintext chunk size: 16 (64 KiB), the only one in v1
    reserved   2 bytes   zero
    key id     8 bytes   which of the target's keys sealed it (keys.py)
    salt      32 bytes   random per object: the object's key is HKDF(target key, salt)
    chunks               each 64 KiB of plaintext (the last one shorter) + a 16-byte GCM tag

Chunk i's nonce is i in 11 bytes then 1 for the last chunk, else 0 (the STREAM construction
age and Tink use); every chunk's associated data is the header. A flipped byte, a chunk
moved, dropped or appended, a cut at any offset or a changed header therefore fails to
authenticate. An empty file is one empty last chunk. The object's name is deliberately not
bound: a rename done on the server (a mount's moves, `aws s3 mv`) must leave it readable.

Nothing here hands out plaintext that has not been verified, and nothing here is a
primitive of its own: AES-GCM and HKDF come from `cryptography`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

from fusesync.errors import IntegrityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = "fusesync-aes256gcm-v1"
"""The value of x-amz-meta-fusesync-enc on every object in this format."""
ENC_META = "fusesync-enc"  # the format's name
KEY_META = "fusesync-key"  # the key id, hex (also in the header)
TAG_META = "fusesync-tag"  # the keyed content tag (keys.TargetKey.content_tag), never an MD5

MAGIC = b"FUSESYNC"
VERSION = 1
CHUNK_SHIFT = 16
CHUNK = 1 << CHUNK_SHIFT
TAG = 16
_HEADER = struct.Struct(">8sBBH8s32s")
HEADER_SIZE = _HEADER.size  # 52
KEY_ID_SIZE = 8
SALT_SIZE = 32


class SealingKey(Protocol):
    """A target key as this format needs it: its id, and per-object keys from it."""

    @property
    def key_id(self) -> bytes: ...

    def object_key(self, salt: bytes) -> bytes:
        """The AES-256 key of the one object whose header carries `salt`."""
        ...


class WrongKey(IntegrityError):
    """The object was sealed under a key this run does not hold (another passphrase)."""

    errno = errno.EACCES


@dataclass(frozen=True, slots=True)
class Header:
    key_id: bytes
    salt: bytes
    raw: bytes

    @classmethod
    def parse(cls, data: bytes, where: str) -> Header:
        if len(data) < HEADER_SIZE:
            raise IntegrityError(f"{where}: too short to be an encrypted object")
        magic, version, shift, reserved, key_id, salt = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise IntegrityError(f"{where}: not an encrypted object of fusesync's (bad magic)")
        if version != VERSION or shift != CHUNK_SHIFT or reserved != 0:
            raise IntegrityError(
                f"{where}: encrypted in a format this fusesync does not know "
                f"(version {version}, chunk 2^{shift}): upgrade fusesync"
            )
        return cls(key_id, salt, bytes(data[:HEADER_SIZE]))


def sealed_size(plain: int) -> int:
    """The object's size for `plain` bytes of plaintext."""
    chunks = max(1, -(-plain // CHUNK))
    return HEADER_SIZE + plain + TAG * chunks


def plain_size(sealed: int) -> int | None:
    """The plaintext size of an object of `sealed` bytes; None when no plaintext seals to
    exactly that many bytes (a cut or padded object)."""
    body = sealed - HEADER_SIZE
    if body < TAG:
        return None
    chunks = -(-body // (CHUNK + TAG))
    plain = body - TAG * chunks
    if plain < 0 or sealed_size(plain) != sealed:
        return None
    return plain


def _aead(key: bytes) -> AESGCM:
    # Imported here: `cryptography` costs ~10 ms to import, which a run that seals and
    # opens nothing (most runs) need not pay.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


class Encryptor:
    """Seals one object chunk by chunk; the caller feeds 64 KiB at a time, in order."""

    def __init__(self, key: SealingKey, salt: bytes | None = None) -> None:
        salt = salt if salt is not None else os.urandom(SALT_SIZE)
        self.header = _HEADER.pack(MAGIC, VERSION, CHUNK_SHIFT, 0, key.key_id, salt)
        self._aad = self.header
        self._aead = _aead(key.object_key(salt))
        self._index = 0
        self._done = False

    def chunk(self, data: bytes, final: bool) -> bytes:
        if self._done or len(data) > CHUNK or (not final and len(data) != CHUNK):
            raise ValueError("chunks must be full and in order, the last one marked final")
        sealed = self._aead.encrypt(_nonce(self._index, final), data, self._aad)
        self._index += 1
        self._done = final
        return sealed


class Decryptor:
    """Opens one object chunk by chunk, knowing its total size (so the last chunk is known
    and a cut object cannot pass for a whole one)."""

    def __init__(self, header: bytes, size: int, keys: Mapping[bytes, SealingKey],
                 relpath: str) -> None:
        self.where = f"'{relpath}'"
        parsed = Header.parse(header, self.where)
        plain = plain_size(size)
        if plain is None:
            raise IntegrityError(
                f"{self.where} failed its integrity check: {size} bytes is no whole encrypted "
                "object (truncated or padded)"
            )
        key = keys.get(parsed.key_id)
        if key is None:
            raise WrongKey(
                f"{self.where} is encrypted under another key (id {parsed.key_id.hex()}) than "
                "this passphrase's; a rekey may be unfinished, or the header is damaged"
            )
        self.plain = plain
        self.chunks = max(1, -(-plain // CHUNK))
        self._aad = parsed.raw
        self._aead = _aead(key.object_key(parsed.salt))
        self._index = 0

    def chunk_sizes(self) -> list[int]:
        """The sealed size of each chunk, in order."""
        last = self.plain - CHUNK * (self.chunks - 1)
        return [CHUNK + TAG] * (self.chunks - 1) + [last + TAG]

    def chunk(self, sealed: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag  # loaded with AESGCM by _aead

        index = self._index
        final = index == self.chunks - 1
        try:
            plain = self._aead.decrypt(_nonce(index, final), sealed, self._aad)
        except InvalidTag:
            raise IntegrityError(
                f"{self.where} failed its integrity check at chunk {index} of {self.chunks} "
                "(corrupted, truncated or reordered)"
            ) from None
        self._index += 1
        return plain


def _read_full(src: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes: fewer only at the end of the file."""
    parts = []
    while size > 0:
        data = src.read(size)
        if not data:
            break
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


def encrypt_stream(src: BinaryIO, write: Callable[[bytes], object], key: SealingKey
                   ) -> tuple[int, str]:
    """Seal everything `src` holds, passing the object's bytes to `write` in order.
    Returns the plaintext's size and hex MD5 (what was actually read). Blocks."""
    enc = Encryptor(key)
    write(enc.header)
    digest = hashlib.md5()
    size = 0
    data = _read_full(src, CHUNK)
    while True:
        following = _read_full(src, CHUNK) if len(data) == CHUNK else b""
        digest.update(data)
        size += len(data)
        write(enc.chunk(data, final=not following))
        if not following:
            return size, digest.hexdigest()
        data = following


def decrypt_stream(src: BinaryIO, size: int, write: Callable[[bytes], object],
                   keys: Mapping[bytes, SealingKey], relpath: str) -> tuple[int, str]:
    """Open an object of `size` bytes read from `src`, passing verified plaintext to `write`
    chunk by chunk. Returns the plaintext's size and hex MD5. Blocks.

    A chunk reaches `write` only once it is verified, but a later chunk may still fail:
    write into a temporary file and keep it only when this returns."""
    dec = Decryptor(_read_full(src, HEADER_SIZE), size, keys, relpath)
    digest = hashlib.md5()
    for length in dec.chunk_sizes():
        sealed = _read_full(src, length)
        if len(sealed) != length:
            raise IntegrityError(f"{dec.where} failed its integrity check: it ended early")
        plain = dec.chunk(sealed)
        digest.update(plain)
        write(plain)
    return dec.plain, digest.hexdigest()


def reseal_stream(src: BinaryIO, size: int, write: Callable[[bytes], object],
                  keys: Mapping[bytes, SealingKey], new: SealingKey, relpath: str
                  ) -> tuple[int, str]:
    """Open an object of `size` bytes from `src` and seal it anew under `new`, chunk by
    chunk (the plaintext never lands anywhere). Returns the plaintext's size and hex MD5.
    Blocks. As with decrypt_stream, `write` may have had part of it when this raises."""
    dec = Decryptor(_read_full(src, HEADER_SIZE), size, keys, relpath)
    enc = Encryptor(new)
    write(enc.header)
    digest = hashlib.md5()
    sizes = dec.chunk_sizes()
    for number, length in enumerate(sizes, start=1):
        sealed = _read_full(src, length)
        if len(sealed) != length:
            raise IntegrityError(f"{dec.where} failed its integrity check: it ended early")
        plain = dec.chunk(sealed)
        digest.update(plain)
        write(enc.chunk(plain, final=number == len(sizes)))
    return dec.plain, digest.hexdigest()


def encrypt_bytes(data: bytes, key: SealingKey) -> bytes:
    enc = Encryptor(key)
    parts = [enc.header]
    chunks = max(1, -(-len(data) // CHUNK))
    for i in range(chunks):
        parts.append(enc.chunk(data[i * CHUNK : (i + 1) * CHUNK], final=i == chunks - 1))
    return b"".join(parts)


def decrypt_bytes(data: bytes, keys: Mapping[bytes, SealingKey], relpath: str) -> bytes:
    dec = Decryptor(data[:HEADER_SIZE], len(data), keys, relpath)
    parts = []
    offset = HEADER_SIZE
    for length in dec.chunk_sizes():
        parts.append(dec.chunk(data[offset : offset + length]))
        offset += length
    return b"".join(parts)


def header_key_id(data: bytes, relpath: str) -> bytes:
    """The key id in an object's first bytes."""
    return Header.parse(data, f"'{relpath}'").key_id

