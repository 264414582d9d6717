"""The embedded index on disk: a checkpoint plus an append-only tail, so that a write costs what
it adds, not the size of the index (at 1M products a full rewrite took 17-22 s per write).

    VERSION        {"format": 2, "epoch": ..., "dims": D, "rows": N, "changes_bytes": B}
    vectors.f32    N x D float32 rows, row-major, appended to within an epoch
    products.json  the rows at the epoch's checkpoint (null: a deleted row)
    changes.jsonl  since the checkpoint, one [row, product or null] per line: a row appended
                   (row == the count so far) or deleted
    graph.faiss    the HNSW graph at the checkpoint (absent: exact search); a reader adds the
                   rows appended since

VERSION is the commit point, replaced atomically under the writer's lock: a writer that dies
mid-append leaves bytes past what VERSION counts, which the next append overwrites (the files
are cut to VERSION's length first), and readers never read past it. A checkpoint starts a new
epoch: readers of the old one load again; readers of the same epoch read only what was
appended since they last looked. Vectors are mapped, not read: a reader's resident memory is
the graph and the records, and every process on the machine shares the page cache.

Format 1 (one VERSION token, vectors.npy, no changes log) is still read; the next write
converts it."""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from schemas import Product

Row = tuple[int, Product | None]


@dataclass(frozen=True)
class Version:
    epoch: str
    dims: int = 0
    rows: int = 0
    changes_bytes: int = 0
    format: int = 2


@dataclass
class Checkpoint:
    rows: list[Product | None]
    vectors: np.ndarray
    graph: object | None  # a faiss index over the checkpoint's rows
    changes: int  # how many were applied on top of the checkpoint


class IndexFiles:
    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, name: str) -> Path:
        return self.directory / name

    # --- reading ---
    def version(self) -> Version | None:
        try:
            text = self._path("VERSION").read_text()
        except FileNotFoundError:
            return None
        if not text.startswith("{"):
            return Version(epoch=text, format=1)
        fields = json.loads(text)
        return Version(epoch=fields["epoch"], dims=fields["dims"], rows=fields["rows"],
                       changes_bytes=fields["changes_bytes"])

    def checkpoint(self, version: Version) -> Checkpoint:
        """The rows, vectors and graph as of the checkpoint, the changes since applied (the
        graph then lacks the vectors appended since: graph.ntotal says how many it has)."""
        records = json.loads(self._path("products.json").read_text())
        rows = [None if r is None else Product(**r) for r in records]
        changes = [] if version.format == 1 else self.changes(0, version.changes_bytes)
        apply_changes(rows, changes)
        if version.format == 1:
            vectors = np.load(self._path("vectors.npy"), mmap_mode="r")
        else:
            vectors = self.vectors(version)
        graph = None
        if self._path("graph.faiss").exists():
            import faiss

            graph = faiss.read_index(str(self._path("graph.faiss")))
        return Checkpoint(rows, vectors, graph, len(changes))

    def vectors(self, version: Version) -> np.ndarray:
        if version.rows == 0:
            return np.zeros((0, version.dims), np.float32)
        return np.memmap(self._path("vectors.f32"), dtype=np.float32, mode="r",
                         shape=(version.rows, version.dims))

    def changes(self, start: int, end: int) -> list[Row]:
        """The changes logged between byte offsets start and end."""
        if end <= start:
            return []
        with open(self._path("changes.jsonl"), "rb") as log:
            log.seek(start)
            lines = log.read(end - start).splitlines()
        return [(row, None if product is None else Product(**product))
                for row, product in map(json.loads, lines)]

    # --- writing (under the writer's lock) ---
    def append(self, version: Version, vectors: np.ndarray, changes: list[Row]) -> Version:
        """Add rows (their vectors, in row order) and deletions to the current epoch."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._write_at("vectors.f32", version.rows * version.dims * 4, vectors.tobytes())
        logged = b"".join(json.dumps([row, None if product is None else product.model_dump()],
                                     separators=(",", ":")).encode() + b"\n"
                          for row, product in changes)
        self._write_at("changes.jsonl", version.changes_bytes, logged)
        return self._commit(replace(version, dims=vectors.shape[1] if len(vectors) else
                                    version.dims, rows=version.rows + len(vectors),
                                    changes_bytes=version.changes_bytes + len(logged)))

    def save(self, rows: list[Product | None], vectors: np.ndarray | None, dims: int,
             graph) -> Version:
        """A new checkpoint of every row. vectors None: vectors.f32 already holds every row
        (rows were only appended or deleted since the last checkpoint)."""
        if vectors is not None:
            staged = self._path("vectors.tmp.f32")
            np.ascontiguousarray(vectors, dtype=np.float32).tofile(staged)
            os.replace(staged, self._path("vectors.f32"))
        self._replace("products.json", json.dumps(
            [None if p is None else p.model_dump() for p in rows]).encode())
        if graph is not None:
            import faiss

            faiss.write_index(graph, str(self._path("graph.tmp.faiss")))
            os.replace(self._path("graph.tmp.faiss"), self._path("graph.faiss"))
        else:
            self._path("graph.faiss").unlink(missing_ok=True)
        self._replace("changes.jsonl", b"")
        self._path("vectors.npy").unlink(missing_ok=True)  # format 1's
        return self._commit(Version(epoch=uuid.uuid4().hex, dims=dims, rows=len(rows)))

    def _write_at(self, name: str, offset: int, data: bytes) -> None:
        """data at offset, cutting off whatever a writer that died left past it."""
        path = self._path(name)
        with open(path, "r+b" if path.exists() else "w+b") as handle:
            handle.seek(offset)
            handle.write(data)
            handle.truncate()

    def _replace(self, name: str, data: bytes) -> None:
        staged = self._path(name + ".tmp")
        staged.write_bytes(data)
        os.replace(staged, self._path(name))

    def _commit(self, version: Version) -> Version:
        self._replace("VERSION", json.dumps({
            "format": 2, "epoch": version.epoch, "dims": version.dims, "rows": version.rows,
            "changes_bytes": version.changes_bytes}).encode())
        return version


def apply_changes(rows: list[Product | None], changes: list[Row]) -> None:
    for row, product in changes:
        if row == len(rows):
            rows.append(product)
        else:
            rows[row] = product
