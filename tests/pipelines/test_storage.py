"""Local and S3 storage behave alike; unreachable locations fail early with a clear message."""

from __future__ import annotations

import socket

import pytest

from pipelines import storage
from pipelines.storage import StorageError


def _exercise(base: str) -> None:
    url = storage.join(base, "folder", "a.bin")
    assert not storage.exists(url)
    assert storage.list_files(storage.join(base, "folder")) == []
    storage.write_bytes(url, b"hello")
    storage.write_bytes(storage.join(base, "folder", "b.bin"), b"xy")
    assert storage.read_bytes(url) == b"hello"
    with storage.open_input(url) as stream:
        assert stream.read() == b"hello"
    entries = storage.list_files(storage.join(base, "folder"))
    assert [(e.name, e.size) for e in entries] == [("a.bin", 5), ("b.bin", 2)]
    storage.write_bytes(url, b"replaced")
    assert storage.stat(url).size == 8
    storage.delete(url)
    storage.delete(url)  # deleting a missing file is fine
    assert not storage.exists(url)
    storage.check_reachable(storage.join(base, "new", "prefix"))


def test_local_storage(tmp_path):
    _exercise(str(tmp_path))
    assert not [p for p in (tmp_path / "folder").iterdir() if storage.TMP_MARKER in p.name]


def test_local_unwritable_location_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not a folder"):
        storage.check_reachable(str(blocker / "sub"))


def test_join_and_scheme():
    assert storage.join("s3://b/p/", "x", "/y") == "s3://b/p/x/y"
    assert storage.is_s3("s3://b") and not storage.is_s3("/tmp/s3:/x")
    with pytest.raises(StorageError, match="no bucket"):
        storage.read_bytes("s3://")


@pytest.mark.integration
def test_s3_storage_against_local_endpoint(s3_server, monkeypatch):
    _exercise(s3_server.url("storage-test"))
    with pytest.raises(StorageError, match="does not exist"):
        storage.check_reachable("s3://no-such-bucket/prefix")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    with pytest.raises(StorageError, match="unreachable"):
        storage.check_reachable(s3_server.url("x"))
