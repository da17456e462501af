"""The remote listing in parallel ranges: split at the keys the last listing saw, every
key taken once whatever changed since, and a store that lists out of order is listed
whole instead."""

from __future__ import annotations

import hashlib
import itertools
import random
import uuid
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from support.hostile_s3 import HostileS3

from fusesync.config import Settings, Target
from fusesync.index import Index
from fusesync.remote.faulty import FaultyRemote
from fusesync.remote.s3 import S3Remote
from fusesync.sync import manifest, remote_scan
from fusesync.sync.matcher import PathMatcher
from fusesync.sync.ranges import LISTED_MANIFEST, S3_PAGE, LastListing, key_ranges, last_listing
from fusesync.sync.remote_scan import list_remote, scan_remote

PREFIX = "sync/tester/listing/"


def target(tmp_path: Path, bucket: str) -> Target:
    return Target(name="listing", path=tmp_path, bucket=bucket, user="tester")


def test_ranges_meet_end_to_end() -> None:
    keys = [f"{PREFIX}k{i:05d}" for i in range(0, 5000, 2)]
    ranges = key_ranges(random.sample(keys, len(keys)), S3_PAGE)
    assert len(ranges) == 3 and ranges[0][0] is None and ranges[-1][1] is None
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end is not None and start == end.decode()  # each range starts where one ends
    assert key_ranges([], S3_PAGE) == [(None, None)]


@pytest.fixture
def settings(fusesync_env, s3_server) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(bucket=fusesync_env.bucket, endpoint_url=s3_server.endpoint_url,
                    region=s3_server.region, addressing_style="path")


def test_parallel_ranges_take_every_key_once_after_changes(
    settings: Settings, tmp_path: Path
) -> None:
    remote = FaultyRemote(S3Remote(settings, max_concurrency=32))
    t = target(tmp_path, settings.bucket)
    exclude = PathMatcher(())

    async def put_all(keys: list[str]) -> None:
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(remote.put_bytes, key, b"x")

    async def run() -> None:
        first = [f"{PREFIX}d{i % 7}/f{i:05d}" for i in range(2100)]
        await put_all(first)
        rows, scan = await list_remote(remote, t, exclude)
        assert set(rows) == {k[len(PREFIX):] for k in first} | {f"d{i}" for i in range(7)}
        assert remote.calls["list"] == 1
        # another cluster adds keys inside every range and deletes some
        added = [f"{PREFIX}d{i % 7}/f{i:05d}x" for i in range(0, 2100, 9)]
        await put_all(added)
        gone = first[100:400]
        await remote.delete_many(gone)
        remote.reset()
        rows, scan = await list_remote(remote, t, exclude, LastListing(dict.fromkeys(first)))
        expected = (set(first) - set(gone)) | set(added)
        assert {k for k in rows if "/" in k} == {k[len(PREFIX):] for k in expected}
        assert scan.objects == len(expected)
        assert remote.calls["list"] == 3  # 2,100 known keys: three ranges at once

    trio.run(run)


def test_a_first_listing_splits_at_the_manifests_paths(
    settings: Settings, tmp_path: Path
) -> None:
    """No listing seen yet (a new cluster's first pull): the manifest comes first and its
    paths split the listing into ranges; a manifest that misses keys and names others
    that are gone still gives every key once."""
    remote = FaultyRemote(S3Remote(settings, max_concurrency=32))
    t = target(tmp_path, settings.bucket)
    keys = [f"{PREFIX}d{i % 7}/f{i:05d}" for i in range(2100)]

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(remote.put_bytes, key, b"x")
        etag = hashlib.md5(b"x").hexdigest()
        named = [k[len(PREFIX):] for k in keys[:1500]] + [f"d{i}/gone" for i in range(50)]
        entries = {path: {"kind": "file", "etag": etag, "size": 1, "md5": etag}
                   for path in named}
        await remote.put_bytes(t.manifest_key, manifest.encode_raw(entries))
        remote.reset()
        rows, scan = await list_remote(remote, t, PathMatcher(()))
        assert {k for k in rows if "/" in k} == {k[len(PREFIX):] for k in keys}
        assert scan.objects == len(keys)
        assert (remote.calls["get_bytes"], remote.calls["list"]) == (1, 2)  # 1,550 named

    trio.run(run)


def test_a_store_listing_out_of_order_is_listed_whole(fusesync_env, tmp_path: Path) -> None:
    keys = [f"{PREFIX}f{i:05d}" for i in range(1100)]
    stub = HostileS3("unordered", {k: b"x" for k in keys}, descending=True)
    with stub.running():
        remote = FaultyRemote(S3Remote(Settings(bucket="unordered",
                                                endpoint_url=stub.endpoint_url,
                                                region="us-east-1",
                                                addressing_style="path")))
        # everything excluded: each key listed is counted, and none needs a HEAD
        rows, scan = trio.run(list_remote, remote, target(tmp_path, "unordered"),
                              PathMatcher(["*"]), LastListing(dict.fromkeys(keys)))
    assert scan.objects == len(keys) and rows == {}
    assert remote.calls["list"] == 3  # two ranges tried, then one whole listing


def test_rows_stand_while_the_manifest_and_every_key_do(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key as the index holds it and the manifest still the version the rows came
    from (asked with If-None-Match): the rows stand and the manifest is not read. A key
    another tool wrote, a manifest written anew, another exclude, or a remote row written
    by anything else (schema V5's triggers): the rows are built again."""
    remote = FaultyRemote(S3Remote(settings, max_concurrency=32))
    t = target(tmp_path, settings.bucket)
    index = Index(tmp_path / "index.db")
    decoded: list[int] = []
    decode_raw = manifest.decode_raw
    monkeypatch.setattr(remote_scan.manifest_codec, "decode_raw",
                        lambda data: decoded.append(1) or decode_raw(data))
    etag = hashlib.md5(b"x").hexdigest()
    paths = [f"d{i % 3}/f{i:02d}" for i in range(30)]

    async def write_manifest(mode: int) -> str:
        entries = {p: {"kind": "file", "etag": etag, "size": 1, "md5": etag, "mode": mode}
                   for p in paths}
        return await remote.put_bytes(t.manifest_key, manifest.encode_raw(entries))

    async def scan(exclude: PathMatcher = PathMatcher(())) -> None:  # noqa: B008
        decoded.clear()
        await scan_remote(remote, t, index, exclude)

    def modes() -> set[int]:
        return {row[0] for row in index.conn.execute(
            "SELECT remote_mode FROM paths WHERE remote_kind = 'file'")}

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for path in paths:
                nursery.start_soon(remote.put_bytes, PREFIX + path, b"x")
        first = await write_manifest(0o100640)
        await scan()
        assert decoded and index.meta(LISTED_MANIFEST) == first and modes() == {0o100640}

        await scan()  # nothing moved: the manifest was not read, no row was written
        assert not decoded and index.meta(LISTED_MANIFEST) == first
        rows, _ = await list_remote(remote, t, PathMatcher(()), last_listing(index, t))
        assert rows is None

        second = await write_manifest(0o100600)  # a push elsewhere: a new manifest
        await scan()
        assert decoded and index.meta(LISTED_MANIFEST) == second and modes() == {0o100600}

        await scan(PathMatcher(["d0/"]))  # another exclude: d0's rows are gone
        assert decoded and index.meta(LISTED_MANIFEST) == second
        assert not any(k.startswith(PREFIX + "d0/") for k in last_listing(index, t).etags)
        await scan()
        assert decoded and len(last_listing(index, t).etags) == len(paths)

        await remote.put_bytes(PREFIX + "d1/foreign", b"y")  # another tool: no manifest
        await scan()
        assert decoded and "d1/foreign" in {r[0] for r in index.conn.execute(
            "SELECT path FROM paths WHERE remote_kind IS NOT NULL")}
        assert index.meta(LISTED_MANIFEST) is None  # its row came from a HEAD, not the manifest
        await scan()  # ... so it is looked at again on every listing
        assert decoded
        await remote.delete(PREFIX + "d1/foreign")
        await scan()
        assert decoded and index.meta(LISTED_MANIFEST) == second

        index.upsert("d2/f02", local_size=1)  # the local side: the rows still stand
        assert index.meta(LISTED_MANIFEST) == second
        index.upsert("d2/f02", remote_mode=0o100777)  # a remote column: they do not
        assert index.meta(LISTED_MANIFEST) is None
        await scan()
        assert decoded and modes() == {0o100600}

    trio.run(run)


def test_a_cut_at_a_folder_loses_no_key_below_it(settings: Settings, tmp_path: Path) -> None:
    """SeaweedFS lists a folder's keys where the folder's name sorts ('e/x' after 'd',
    before 'e-1') and answers 'the keys after e' with those after the folder e and all it
    holds. A listing split where a folder is (a first listing's manifest names folders; a
    file the last listing saw may be a folder now), or beside one, takes every key."""
    remote = FaultyRemote(S3Remote(settings, max_concurrency=32))
    t = target(tmp_path, settings.bucket)
    # 998 keys sort before the folder 'e', so a split at S3_PAGE - 1 keys falls on it
    keys = [*(f"{PREFIX}d/f{i:04d}" for i in range(S3_PAGE - 2)), f"{PREFIX}e/x",
            f"{PREFIX}e/y", *(f"{PREFIX}g{i:03d}" for i in range(100))]
    etag = hashlib.md5(b"x").hexdigest()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(remote.put_bytes, key, b"x")
        entries: dict[str, dict[str, object]] = {
            key[len(PREFIX):]: {"kind": "file", "etag": etag, "size": 1, "md5": etag}
            for key in keys
        }
        entries["e"] = {"kind": "dir", "mode": 0o40755}
        entries["d"] = {"kind": "dir", "mode": 0o40755}
        await remote.put_bytes(t.manifest_key, manifest.encode_raw(entries))
        rows, scan = await list_remote(remote, t, PathMatcher(()))
        assert scan.objects == len(keys) and {"e/x", "e/y"} <= set(rows)

        was_a_file = [*(k for k in keys if "/e/" not in k), f"{PREFIX}e"]
        rows, scan = await list_remote(remote, t, PathMatcher(()),
                                       LastListing(dict.fromkeys(was_a_file)))
        assert scan.objects == len(keys) and {"e/x", "e/y"} <= set(rows)
        assert rows is not None and len([p for p in rows if "/" in p]) == len(keys) - 100

        # a file 'e-1' beside the folder: S3 puts it before 'e/x', SeaweedFS after 'e/y';
        # a cut at it saw no key out of order, and missed it and the folder's keys
        await remote.put_bytes(f"{PREFIX}e-1", b"x")
        now = sorted([*keys, f"{PREFIX}e-1"])
        assert key_ranges(now, S3_PAGE)[1][0] == f"{PREFIX}e-1"  # the cut
        rows, scan = await list_remote(remote, t, PathMatcher(()),
                                       LastListing(dict.fromkeys(now)))
        assert scan.objects == len(now) and {"e/x", "e/y", "e-1"} <= set(rows or ())

    trio.run(run)


_NAMES = st.sampled_from(["a", "a-1", "a.txt", "a b", "ab", "b", "é", "z~"])
_PATHS = st.lists(_NAMES, min_size=1, max_size=3).map("/".join)


@given(paths=st.sets(_PATHS, min_size=1, max_size=40), seen=st.sets(_PATHS, max_size=25),
       page=st.integers(min_value=2, max_value=6))
@example(paths={"a/a"}, seen={"a-1"}, page=2)  # SeaweedFS: 'a/a' before 'a-1', none after
@example(paths={"a/x", "b"}, seen={"a"}, page=2)  # a cut at a folder
@hsettings(max_examples=40, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_ranges_take_every_key_once_whatever_the_last_listing_saw(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    paths: set[str], seen: set[str], page: int,
) -> None:
    """Keys with names that S3 and SeaweedFS order differently ('a/x', 'a-1', 'a.txt'),
    split at keys the last listing saw, some of them gone or folders now, in ranges of a
    few keys: the listing holds every key once."""
    keys = {p for p in paths if not any(q.startswith(p + "/") for q in paths)}  # no file
    remote = FaultyRemote(S3Remote(settings, max_concurrency=16))  # is also a folder
    t = Target(name=f"l{uuid.uuid4().hex[:12]}", path=tmp_path, bucket=settings.bucket,
               user="tester")
    monkeypatch.setattr(remote_scan, "S3_PAGE", page)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(remote.put_bytes, t.prefix + key, b"x")
        last = LastListing(dict.fromkeys(t.prefix + p for p in seen))
        rows, scan = await list_remote(remote, t, PathMatcher(()), last)
        assert rows is not None and scan.objects == len(keys)
        assert {p for p, row in rows.items() if row[0] == "file"} == keys

    trio.run(run)
