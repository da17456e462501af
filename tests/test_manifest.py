"""The manifest object (what push writes is what pull reads; what a newer version wrote
survives an older version's merge), and symlink targets no manifest or index can hold."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import zlib

import orjson
import pytest
from syncenv import Cluster, keys

from fusesync.sync import manifest
from fusesync.sync.manifest import (
    ManifestBody,
    ManifestEntry,
    decode,
    decode_raw,
    encode,
    encode_raw,
)

NOT_UTF8 = b"runs/\xff\xfe-latest"


def test_round_trip_keeps_every_field() -> None:
    entries = {
        "jobs/run.sh": ManifestEntry(kind="file", etag='"e"', md5="0" * 32, size=12,
                                     mode=stat.S_IFREG | 0o750, uid=1000, gid=100,
                                     owner="ann", group="users", mtime=1600000000.123456),
        "d\u00e9j\u00e0/\u2603": ManifestEntry(kind="symlink", mode=stat.S_IFLNK | 0o777,
                                        target="../\u00e9t\u00e9"),
        "empty": ManifestEntry(kind="dir", mode=stat.S_IFDIR | 0o700),
        "secret": ManifestEntry(kind="file", enc="fusesync-aes256gcm-v1", key="01" * 8),
    }
    assert decode(encode(entries)) == entries


def test_reads_what_the_standard_library_wrote() -> None:
    body = {"format": 1, "entries": {"\u00e9": {"kind": "file", "size": 3, "mtime": 1.5}}}
    data = gzip.compress(json.dumps(body).encode())  # \u escapes, spaces: as before orjson
    assert decode(data) == {"\u00e9": ManifestEntry(kind="file", size=3, mtime=1.5)}


def test_unreadable_manifests_count_as_none() -> None:
    lone_surrogate = gzip.compress(b'{"format": 1, "entries": {"a": {"kind": "symlink",'
                                   b' "target": "\\udcff"}}}')
    for data in (b"", b"not gzip", gzip.compress(b"{"), gzip.compress(b"[]"),
                 gzip.compress(b'{"format": 99, "entries": {}}'),
                 gzip.compress(b'{"format": 1, "entries": []}'), lone_surrogate):
        assert decode(data) == {}
    mixed = gzip.compress(b'{"format": 1, "entries": {"a": 1, "b": {"size": 2},'
                          b' "c": {"kind": "file"}}}')
    assert decode(mixed) == {"c": ManifestEntry(kind="file")}


def test_fields_of_a_newer_version_survive_a_merge() -> None:
    raw = decode_raw(encode_raw({"a": {"kind": "file", "size": 1, "future": [1, 2]}}))
    assert raw["a"]["future"] == [1, 2]
    assert decode(encode_raw(raw)) == {"a": ManifestEntry(kind="file", size=1)}


def test_a_kept_body_writes_again_only_what_changed(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path) -> None:
    """The mount daemon's manifest: after the first write, a change compresses one shard
    again, not every entry; what it writes reads back whole, by us and by gunzip."""
    entries = {f"d{i // 50}/f{i}": {"kind": "file", "size": i} for i in range(5000)}
    body = ManifestBody(dict(entries))
    assert decode_raw(body.encode()) == entries
    assert decode_raw(body.encode()) == entries  # nothing changed: the same members
    compressed: list[int] = []
    member = manifest._member
    monkeypatch.setattr(manifest, "_member", lambda text: compressed.append(len(text))
                        or member(text))
    body.set("d3/f150", {"kind": "file", "size": 7})
    body.set("new/one", {"kind": "symlink", "target": "d3"})
    body.set("d0/f1", None)
    body.set("never/there", None)
    data = body.encode()
    entries.update({"d3/f150": {"kind": "file", "size": 7},
                    "new/one": {"kind": "symlink", "target": "d3"}})
    del entries["d0/f1"]
    assert decode_raw(data) == entries
    assert len(compressed) <= 4 and sum(compressed) < len(json.dumps(entries)) / 10
    (tmp_path / "m.gz").write_bytes(data)
    text = subprocess.run(["gunzip", "-c", str(tmp_path / "m.gz")], capture_output=True,
                          check=True).stdout
    assert json.loads(text) == {"format": 1, "entries": entries}
    for path in list(entries):  # emptied: still a manifest
        body.set(path, None)
    assert decode_raw(body.encode()) == {}


def members(data: bytes) -> list[bytes]:
    """The gzip members of a manifest object, compressed, in order."""
    out = []
    while data:
        inflate = zlib.decompressobj(31)
        inflate.decompress(data)
        out.append(data[: len(data) - len(inflate.unused_data)])
        data = inflate.unused_data
    return out


def test_a_body_read_back_keeps_the_shards_it_does_not_touch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A push reads the manifest and writes it again with its changes: the shards they do
    not touch go out byte for byte as they came, decoded never; the first shard emptied,
    the next one becomes first (no comma before it); a manifest of one member (older
    writers, encode_raw) is read whole. Every version reads back as the entries."""
    entries = {f"d{i // 50}/f{i}": {"kind": "file", "size": i} for i in range(3000)
               if manifest._shard(f"d{i // 50}/f{i}") > 1}  # shards 0 and 1 empty
    stored = ManifestBody(dict(entries)).encode()
    decoded: list[int] = []
    loads = manifest.orjson.loads
    monkeypatch.setattr(manifest.orjson, "loads", lambda text: decoded.append(1) or loads(text))
    body = ManifestBody.read(stored)
    body.set("d7/f350", {"kind": "file", "size": 1})
    data = body.encode()
    assert len(decoded) == 1  # the one shard that changed
    before, after = members(stored), members(data)
    assert len(before) == len(after)
    assert sum(a != b for a, b in zip(before, after, strict=True)) == 1
    entries["d7/f350"] = {"kind": "file", "size": 1}
    assert decode_raw(data) == entries

    body = ManifestBody.read(data)
    for path in [p for p in entries if manifest._shard(p) == 2]:  # the first one read
        body.set(path, None)
        del entries[path]
    assert decode_raw(body.encode()) == entries  # shard 3 first now, its comma dropped
    lowest = next(p for p in map(str, range(1000)) if manifest._shard(p) == 0)
    body = ManifestBody.read(body.encode())
    body.set(lowest, {"kind": "dir"})  # before the one read first, which now needs a comma
    entries[lowest] = {"kind": "dir"}
    assert decode_raw(body.encode()) == entries
    assert json.loads(gzip.decompress(body.encode())) == {"format": 1, "entries": entries}

    body = ManifestBody.read(encode_raw(entries))  # one member: every entry decoded
    body.set("new", {"kind": "file", "size": 2})
    assert decode_raw(body.encode()) == {**entries, "new": {"kind": "file", "size": 2}}
    assert decode_raw(ManifestBody.read(ManifestBody({}).encode()).encode()) == {}


def test_a_look_alike_manifest_is_merged_whole() -> None:
    """Members in the layout's shape whose paths do not belong to their shard (not
    written by ManifestBody) and unreadable ones: the merge still loses no readable entry
    and never writes a path twice."""
    paths = [f"p{i}" for i in range(40)]
    shards = sorted({manifest._shard(p) for p in paths})
    by_first = sorted(paths, key=manifest._shard)
    # every path in one member, under the first path's shard
    text = orjson.dumps({p: {"kind": "file", "size": 1} for p in by_first})[1:-1]
    data = manifest._HEAD + manifest._member(text) + manifest._TAIL
    assert decode_raw(data) == {p: {"kind": "file", "size": 1} for p in paths}
    body = ManifestBody.read(data)
    body.set(by_first[-1], {"kind": "file", "size": 9})  # its shard is not the member's
    out = decode_raw(body.encode())
    assert out == {**{p: {"kind": "file", "size": 1} for p in paths},
                   by_first[-1]: {"kind": "file", "size": 9}}
    assert len(shards) > 1
    assert ManifestBody.read(b"not gzip at all").encode() == ManifestBody({}).encode()


def test_symlink_target_not_utf8_is_skipped_and_reported(one: Cluster, s3) -> None:
    """Such a target cannot be recorded (the index and the manifest hold UTF-8): push says
    so and goes on; a link pushed before and retargeted so is not taken for deleted."""
    (one.home / "notes.txt").write_text("x")
    os.symlink("runs/now", one.home / "was-fine")
    assert one.push().exit_code == 0
    os.symlink(NOT_UTF8, os.fsencode(one.home / "latest"))
    os.unlink(one.home / "was-fine")
    os.symlink(NOT_UTF8, one.home / "was-fine")
    (one.home / "notes.txt").write_text("changed")
    result = one.push(status=3)
    assert "latest: symlink target is not valid UTF-8" in result.output
    assert "was-fine: symlink target is not valid UTF-8" in result.output
    found = keys(s3, one.bucket, "sync/tester/default/")
    assert "sync/tester/default/was-fine" in found  # kept, not deleted
    assert "sync/tester/default/latest" not in found
    body = s3.get_object(Bucket=one.bucket, Key="sync/tester/default/notes.txt")["Body"]
    assert body.read() == b"changed"


def test_remote_symlink_target_not_utf8_is_skipped(one: Cluster, s3) -> None:
    """Another tool wrote an s3fs-style symlink whose body is not UTF-8: pull skips it."""
    prefix = "sync/tester/default/"
    s3.put_object(Bucket=one.bucket, Key=prefix + "link", Body=NOT_UTF8,
                  Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    s3.put_object(Bucket=one.bucket, Key=prefix + "plain.txt", Body=b"hello")
    result = one.pull(status=3)
    assert f"{prefix}link: symlink target is not valid UTF-8" in result.output
    assert (one.home / "plain.txt").read_bytes() == b"hello"
    assert not os.path.lexists(one.home / "link")


def test_pull_lands_no_body_that_misses_its_md5(one: Cluster, two: Cluster, s3) -> None:
    """The manifest (or a damaged transfer) disagrees with a small file's bytes: pull
    leaves that path alone and says so, and lands the others."""
    (one.home / "a.txt").write_text("alpha")
    (one.home / "b.txt").write_text("beta")
    assert one.push().exit_code == 0
    key = "sync/tester/default.manifest"
    raw = decode_raw(s3.get_object(Bucket=one.bucket, Key=key)["Body"].read())
    raw["a.txt"]["md5"] = "0" * 32
    s3.put_object(Bucket=one.bucket, Key=key, Body=encode_raw(raw))
    result = two.pull(status=3)
    assert "skipped: a.txt: " in result.output and "does not match its MD5" in result.output
    assert not os.path.lexists(two.home / "a.txt")
    assert (two.home / "b.txt").read_text() == "beta"
    assert not [p for p in two.home.iterdir() if p.name not in ("b.txt",)]  # no leftovers
