"""The upstream dataset folders a build reads, on a local disk or under an s3:// prefix.

The `dataset_builders` readers work on local paths. For a local root they read in place (and
the build runs its read tasks on the node that holds the disk, see `build_shards`); for an
s3:// root a task downloads just the files it reads into a scratch folder with the same layout
(`stage`), and the annotation files every task of a split needs are kept per process
(`stage_cached`). Listings give names and sizes without reading any content.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs as pafs

from pipelines import storage

_STAGE_CACHE = Path(tempfile.gettempdir()) / "read-raw-cache"


class RawInputs:
    """One dataset root: `root` is a local folder or s3://bucket/prefix."""

    def __init__(self, root: str) -> None:
        self.root = str(root).rstrip("/") if storage.is_s3(root) else str(Path(root).absolute())
        self.is_s3 = storage.is_s3(root)

    def url(self, relative: str | Path) -> str:
        return storage.join(self.root, str(relative))

    def is_dir(self, relative: str | Path = "") -> bool:
        if not self.is_s3:
            return (Path(self.root) / relative).is_dir()
        fs, path = storage.resolve(self.url(relative) if str(relative) else self.root)
        return fs.get_file_info(path).type == pafs.FileType.Directory

    def is_file(self, relative: str | Path) -> bool:
        if not self.is_s3:
            return (Path(self.root) / relative).is_file()
        return storage.exists(self.url(relative))

    def listing(self, relative: str | Path) -> dict[str, int]:
        """{file name: size} of the files directly inside a folder (empty when absent)."""
        if not self.is_s3:
            folder = Path(self.root) / relative
            if not folder.is_dir():
                return {}
            out = {}
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_file():
                        out[entry.name] = entry.stat().st_size
            return out
        return {e.name: e.size for e in storage.list_files(self.url(relative))}

    def fingerprint(self, folders: Iterable[str | Path]) -> str:
        """sha256 over (path, size, mtime) of every file under `folders`: no content reads."""
        digest = hashlib.sha256()
        for folder in folders:
            digest.update(str(folder).encode())
            if self.is_s3:
                fs, path = storage.resolve(self.url(folder))
                infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True,
                                                           recursive=True))
                for info in sorted(infos, key=lambda i: i.path):
                    if info.type == pafs.FileType.File:
                        digest.update(f"{info.path}\0{info.size}\0{info.mtime_ns}\n".encode())
                continue
            local = Path(self.root) / folder
            if local.is_file():  # an annotation file given on its own (e.g. VQA's JSON)
                info = local.stat()
                digest.update(f"{info.st_size}\0{info.st_mtime_ns}\n".encode())
                continue
            if not local.is_dir():
                digest.update(b"<missing>")
                continue
            for dirpath, dirnames, filenames in os.walk(local):
                dirnames.sort()
                for filename in sorted(filenames):
                    info = os.stat(os.path.join(dirpath, filename))
                    rel = os.path.relpath(os.path.join(dirpath, filename), local)
                    digest.update(f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def external(self, text: str, local_roots: Iterable[Path]) -> str:
        """`text` with staged local paths written as the root's URLs (provenance stays true)."""
        if not self.is_s3:
            return text
        for local in local_roots:
            text = text.replace(f"{local}/", f"{self.root}/")
        return text

    def stage(self, relatives: Iterable[str | Path], scratch: Path) -> Path:
        """A local root holding `relatives`: the root itself when local, else `scratch` with
        the downloaded files (a file missing on S3 is simply absent there)."""
        if not self.is_s3:
            return Path(self.root)
        for relative in relatives:
            target = scratch / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                target.write_bytes(storage.read_bytes(self.url(relative)))
        return scratch

    def stage_cached(self, relatives: Iterable[str | Path]) -> Path:
        """Like `stage`, into a folder named by the files' (path, size, mtime), reused by later
        tasks of this node, so a split's annotation files download once per node."""
        if not self.is_s3:
            return Path(self.root)
        relatives = [str(r) for r in relatives]
        stamps = [(r, storage.stat(self.url(r))) for r in relatives]
        key = hashlib.sha256(repr([(self.root, r, s.size, s.mtime_ns) if s else (r,)
                                   for r, s in stamps]).encode()).hexdigest()[:20]
        folder = _STAGE_CACHE / key
        for relative, remote in stamps:
            local = folder / relative
            if remote is not None and not local.is_file():
                local.parent.mkdir(parents=True, exist_ok=True)
                storage.write_bytes(str(local), storage.read_bytes(self.url(relative)))
        return folder
