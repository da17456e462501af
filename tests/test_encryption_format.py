"""The encrypted object format and the keyring, without a server: round trips and tampering
(property tests), sizes, wrong keys, and the keyring's own checks."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusesync.crypt import keys
from fusesync.crypt.stream import (
    CHUNK,
    FORMAT,
    HEADER_SIZE,
    TAG,
    WrongKey,
    decrypt_bytes,
    decrypt_stream,
    encrypt_bytes,
    encrypt_stream,
    plain_size,
    sealed_size,
)
from fusesync.errors import IntegrityError

KEY = keys.TargetKey(b"\x01" * 8, b"k" * 32)  # a real key, from fixed bytes instead of scrypt
OTHER_SAME_ID = keys.TargetKey(b"\x01" * 8, b"m" * 32)
OTHER_ID = keys.TargetKey(b"\x02" * 8, b"k" * 32)
RING = {KEY.key_id: KEY}
PATH = ".ssh/id_ed25519"


def data_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# sizes that matter: empty, small, and around chunk boundaries
sizes = st.one_of(
    st.integers(0, 300),
    st.sampled_from([CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK - 7]),
    st.integers(0, 3 * CHUNK + 5),
)


@settings(max_examples=60, deadline=None)
@given(size=sizes, seed=st.integers(0, 2**32))
def test_round_trip_bytes_and_stream(size: int, seed: int) -> None:
    plain = data_of(size, seed)
    sealed = encrypt_bytes(plain, KEY)
    assert len(sealed) == sealed_size(size)
    assert plain_size(len(sealed)) == size
    assert decrypt_bytes(sealed, RING, PATH) == plain

    out = io.BytesIO()
    got_size, md5 = encrypt_stream(io.BytesIO(plain), out.write, KEY)
    assert (got_size, md5) == (size, hashlib.md5(plain).hexdigest())
    streamed = out.getvalue()
    assert len(streamed) == len(sealed) and streamed != sealed  # a fresh salt every time
    back = io.BytesIO()
    assert decrypt_stream(io.BytesIO(streamed), len(streamed), back.write, RING, PATH) == (
        size, hashlib.md5(plain).hexdigest())
    assert back.getvalue() == plain


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 3 * CHUNK), seed=st.integers(0, 2**32))
def test_ciphertext_holds_no_plaintext(size: int, seed: int) -> None:
    plain = b"BEGIN OPENSSH PRIVATE KEY" + data_of(size, seed)
    sealed = encrypt_bytes(plain, KEY)
    assert b"BEGIN OPENSSH" not in sealed


@settings(max_examples=80, deadline=None)
@given(size=sizes, seed=st.integers(0, 2**32), where=st.floats(0, 1), bit=st.integers(0, 7))
def test_any_flipped_bit_fails(size: int, seed: int, where: float, bit: int) -> None:
    sealed = bytearray(encrypt_bytes(data_of(size, seed), KEY))
    offset = min(int(where * len(sealed)), len(sealed) - 1)
    sealed[offset] ^= 1 << bit
    with pytest.raises(IntegrityError):
        decrypt_bytes(bytes(sealed), RING, PATH)


@settings(max_examples=60, deadline=None)
@given(size=sizes, seed=st.integers(0, 2**32), cut=st.floats(0, 1))
def test_any_truncation_fails(size: int, seed: int, cut: float) -> None:
    sealed = encrypt_bytes(data_of(size, seed), KEY)
    keep = min(int(cut * len(sealed)), len(sealed) - 1)
    with pytest.raises(IntegrityError):
        decrypt_bytes(sealed[:keep], RING, PATH)
    with pytest.raises(IntegrityError):
        decrypt_stream(io.BytesIO(sealed[:keep]), keep, lambda _b: None, RING, PATH)


def chunks_of(sealed: bytes) -> tuple[bytes, list[bytes]]:
    body = sealed[HEADER_SIZE:]
    step = CHUNK + TAG
    return sealed[:HEADER_SIZE], [body[i : i + step] for i in range(0, len(body), step)]


def test_whole_chunks_dropped_appended_or_swapped_fail() -> None:
    plain = data_of(3 * CHUNK + 100, 7)
    header, parts = chunks_of(encrypt_bytes(plain, KEY))
    assert len(parts) == 4
    cases = {
        "last chunk dropped": header + b"".join(parts[:3]),
        "a chunk repeated at the end": header + b"".join(parts[:3]) + parts[2] + parts[3],
        "first two swapped": header + parts[1] + parts[0] + parts[2] + parts[3],
        "final chunk moved first": header + parts[3] + b"".join(parts[:3]),
    }
    for what, sealed in cases.items():
        with pytest.raises(IntegrityError):
            decrypt_bytes(sealed, RING, PATH)
            pytest.fail(what)
    # a second object's chunk (same key, same index) does not fit in this one
    _h2, others = chunks_of(encrypt_bytes(plain, KEY))
    with pytest.raises(IntegrityError, match="chunk 1 of 4"):
        decrypt_bytes(header + parts[0] + others[1] + parts[2] + parts[3], RING, PATH)


def test_object_is_bound_to_its_key_not_its_name() -> None:
    sealed = encrypt_bytes(b"secret", KEY)
    # renamed on the server (a mount's move, aws s3 mv): still readable where it went
    assert decrypt_bytes(sealed, RING, ".ssh/renamed") == b"secret"
    with pytest.raises(IntegrityError, match="integrity check"):
        decrypt_bytes(sealed, {KEY.key_id: OTHER_SAME_ID}, PATH)
    with pytest.raises(WrongKey, match="another key"):
        decrypt_bytes(sealed, {OTHER_ID.key_id: OTHER_ID}, PATH)
    with pytest.raises(IntegrityError, match="not an encrypted object"):
        decrypt_bytes(b"plain text that was never encrypted, long enough for a header", RING,
                      PATH)
    newer = bytearray(sealed)
    newer[8] = 2
    with pytest.raises(IntegrityError, match="upgrade fusesync"):
        decrypt_bytes(bytes(newer), RING, PATH)


def test_sizes_of_impossible_objects() -> None:
    assert plain_size(HEADER_SIZE + TAG) == 0
    assert plain_size(HEADER_SIZE + TAG - 1) is None
    assert plain_size(HEADER_SIZE + CHUNK + TAG + 5) is None  # a last chunk shorter than a tag
    assert plain_size(sealed_size(CHUNK)) == CHUNK
    assert sealed_size(CHUNK + 1) == HEADER_SIZE + CHUNK + 1 + 2 * TAG


def test_keyring_round_trip_and_wrong_passphrase() -> None:
    params, key = keys.create(b"correct horse")
    ring = keys.Keyring({params.key_id: params}, params.key_id)
    again = keys.Keyring.decode(ring.encode())
    assert again == ring
    assert b"correct horse" not in ring.encode()
    opened = again.unlock(b"correct horse")
    assert opened is not None and opened.key_id == key.key_id
    assert opened.content_tag("d41d8cd98f00b204e9800998ecf8427e") == key.content_tag(
        "d41d8cd98f00b204e9800998ecf8427e")
    assert again.unlock(b"wrong horse") is None
    sealed = encrypt_bytes(b"x", key)
    assert decrypt_bytes(sealed, {opened.key_id: opened}, PATH) == b"x"


def test_content_tag_is_keyed() -> None:
    md5 = hashlib.md5(b"ssh-ed25519 AAAA").hexdigest()
    tag = KEY.content_tag(md5)
    assert tag.startswith(keys.TAG_PREFIX) and md5 not in tag
    assert tag != OTHER_SAME_ID.content_tag(md5)
    assert tag != KEY.content_tag(hashlib.md5(b"other").hexdigest())


def test_keyring_refuses_what_it_cannot_trust() -> None:
    params, _key = keys.create(b"pw")
    body = json.loads(keys.Keyring({params.key_id: params}, params.key_id).encode())
    entry = body["keys"][params.key_id.hex()]
    for change, message in (
        ({"n": 1 << 30}, "scrypt cost"),
        ({"n": 3 << 15}, "scrypt cost"),
        ({"kdf": "argon2"}, "key derivation"),
        ({"salt": "%%%"}, "unreadable"),
    ):
        bad = json.loads(json.dumps(body))
        bad["keys"][params.key_id.hex()] = {**entry, **change}
        with pytest.raises(keys.KeyringError, match=message):
            keys.Keyring.decode(json.dumps(bad).encode())
    with pytest.raises(keys.KeyringError, match="format"):
        keys.Keyring.decode(json.dumps({**body, "format": 9}).encode())
    with pytest.raises(keys.KeyringError, match="does not hold"):
        keys.Keyring.decode(json.dumps({**body, "current": "00" * 8}).encode())
    with pytest.raises(keys.KeyringError):
        keys.Keyring.decode(b"not json")
    assert FORMAT == "fusesync-aes256gcm-v1"


# A keyring as fusesync wrote it before keys were retired (format 1), half-way through a
# rekey: the old passphrase opens the retiring key, the new one the current key.
FORMAT_1 = b"""{
 "current": "bb64162729125d3f",
 "format": 1,
 "keys": {
  "7550f775be049f23": {
   "check": "S+SqcDENF8IbbYX8z38TC5/UBmeIMVSFncIc47Xxi/s=",
   "kdf": "scrypt",
   "n": 131072,
   "p": 1,
   "r": 8,
   "salt": "A7hz+5hzib/Dwn3X+3i9DtbWDHSUdsmo1FavzcFVEHM="
  },
  "bb64162729125d3f": {
   "check": "0o8QQGHddx/cRKEQyRydTrpkaprBLHjtj+ZthQzBPJ0=",
   "kdf": "scrypt",
   "n": 131072,
   "p": 1,
   "r": 8,
   "salt": "O48AvxC920mPjm45uZEJEKV7FCwyMoWvRyEfY7n9nNA="
  }
 },
 "retiring": "7550f775be049f23"
}
"""
FORMAT_1_OLD, FORMAT_1_NEW = b"written before retired keys", b"and its new passphrase"


def test_keyrings_of_the_first_format_load_and_retired_keys_survive_a_reload() -> None:
    ring = keys.Keyring.decode(FORMAT_1, "etag")
    assert ring.encode() == FORMAT_1  # no retired key: written exactly as before
    old_id, new_id = bytes.fromhex("7550f775be049f23"), bytes.fromhex("bb64162729125d3f")
    assert ring.current == new_id and ring.retiring == old_id and ring.retired == ()
    opened_old = ring.unlock(FORMAT_1_OLD)
    assert opened_old is not None and opened_old.key_id == old_id

    done = ring.rekey_done()
    assert done.etag == "etag" and done.retiring is None and done.retired == (old_id,)
    body = json.loads(done.encode())
    assert body["format"] == 2 and body["retired"] == [old_id.hex()]
    assert set(body["keys"]) == {old_id.hex(), new_id.hex()}  # the entry stays
    again = keys.Keyring.decode(done.encode())
    assert again == done and again.state(old_id) == "retired"
    assert again.unlock(FORMAT_1_OLD) is None
    assert again.unlock(FORMAT_1_OLD, current_only=True, retired=True) is None
    reopened = again.unlock(FORMAT_1_OLD, retired=True)
    assert reopened is not None and reopened.key_id == old_id
    assert reopened.check_value() == opened_old.check_value()
    opened_new = again.unlock(FORMAT_1_NEW)
    assert opened_new is not None and opened_new.key_id == new_id

    for change, message in (
        ({"retired": ["00" * 8]}, "does not hold"),
        ({"retired": [new_id.hex()]}, "twice"),
        ({"retired": [old_id.hex(), old_id.hex()]}, "twice"),
        ({"format": 3}, "format"),
    ):
        with pytest.raises(keys.KeyringError, match=message):
            keys.Keyring.decode(json.dumps({**body, **change}).encode())


LAZY_CRYPTO_PROBE = """
import sys
import fusesync.cli, fusesync.sync.engine, fusesync.sync.push, fusesync.fs.daemon
assert not any(m.startswith("cryptography") for m in sys.modules), "loaded at import"

from fusesync import crypt
from fusesync.crypt import keys
from fusesync.crypt.stream import decrypt_bytes, encrypt_bytes
from fusesync.errors import IntegrityError

crypt.preload()

class NoMoreImports:
    def find_spec(self, name, path=None, target=None):
        raise ImportError(f"imported after preload: {name}")

sys.meta_path.insert(0, NoMoreImports())
params, key = keys.create(b"passphrase")
assert keys.derive(b"passphrase", params) is not None
sealed = encrypt_bytes(b"secret", key)
assert decrypt_bytes(sealed, {key.key_id: key}, "f") == b"secret"
assert key.content_tag("0" * 32)
try:
    decrypt_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]), {key.key_id: key}, "f")
except IntegrityError:
    print("ok")
"""


def test_crypto_loads_only_when_used_and_preload_loads_all_of_it() -> None:
    """A run that seals nothing never imports `cryptography` (~10 ms of every start); the
    mount daemon's preload() imports everything sealing and opening use, as an import once
    mounted could read through its own mount."""
    out = subprocess.run([sys.executable, "-c", LAZY_CRYPTO_PROBE], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
