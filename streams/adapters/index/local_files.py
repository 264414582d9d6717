"""The embedded index on disk: a checkpoint plus an append-only tail, so that a write costs what
it adds, not the size of the index (at 1M products a full rewrite took 17-22 s per write).

    VERSION              {"format": 2, "epoch": E, "vectors": V, "dims": D, "rows": N,
                          "changes_bytes": B}
    vectors.V.f32        N x D float32 rows, row-major, appended to
    products.E.json      the rows at checkpoint E (null: a deleted row)
    changes.E.jsonl      since checkpoint E, one [row, product or null] per line: a row
                         appended (row == the count so far) or deleted
    graph.E.faiss        the HNSW graph at checkpoint E (absent: exact search); a reader adds
                         the rows appended since

VERSION is the commit point, replaced atomically under the writer's lock, and names the files
it stands for. A checkpoint writes a new epoch's files beside the old ones, commits, and only
then removes the old: a writer killed during one leaves the last committed index whole (and
files no VERSION names, removed by the next checkpoint). An append writes past what VERSION
counts, cutting off first whatever a writer that died mid-append left there; readers never
read past it. Readers of the same epoch read only what was appended since they last looked;
a new epoch is loaded whole. Vectors are mapped, not read: a reader's resident memory is the
graph and the records, and every process on the machine shares the page cache. A process
that still maps a removed file keeps it until it loads the new epoch.

Format 1 (one VERSION token, vectors.npy, products.json, graph.faiss, no changes log) is still
read; the next write converts it."""
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
    vectors: str = ""  # the vectors file's generation (a new one when rows are renumbered)
    dims: int = 0
    rows: int = 0
    changes_bytes: int = 0
    format: int = 2


@dataclass
class Checkpoint:
    rows: list[Product | None]
    positions: dict[str, int]
    vectors: np.ndarray
    graph: object | None  # a faiss index over the checkpoint's rows
    changes: int  # how many were applied on top of the checkpoint


class IndexFiles:
    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, name: str) -> Path:
        return self.directory / name

    def _names(self, version: Version) -> dict[str, str]:
        if version.format == 1:
            return {"products": "products.json", "graph": "graph.faiss",
                    "vectors": "vectors.npy"}
        return {"products": f"products.{version.epoch}.json",
                "changes": f"changes.{version.epoch}.jsonl",
                "graph": f"graph.{version.epoch}.faiss",
                "vectors": f"vectors.{version.vectors}.f32"}

    # --- reading ---
    def version(self) -> Version | None:
        try:
            text = self._path("VERSION").read_text()
        except FileNotFoundError:
            return None
        if not text.startswith("{"):
            return Version(epoch=text, format=1)
        fields = json.loads(text)
        return Version(epoch=fields["epoch"], vectors=fields["vectors"], dims=fields["dims"],
                       rows=fields["rows"], changes_bytes=fields["changes_bytes"])

    def checkpoint(self, version: Version) -> Checkpoint:
        """The rows, vectors and graph as of the checkpoint, the changes since applied (the
        graph then lacks the vectors appended since: graph.ntotal says how many it has)."""
        names = self._names(version)
        records = json.loads(self._path(names["products"]).read_text())
        rows = [None if r is None else Product(**r) for r in records]
        positions = {p.product_id: row for row, p in enumerate(rows) if p is not None}
        changes = [] if version.format == 1 else self.changes(version, 0)
        apply_changes(rows, positions, changes)
        if version.format == 1:
            vectors = np.load(self._path(names["vectors"]), mmap_mode="r")
        else:
            vectors = self.vectors(version)
        graph = None
        if self._path(names["graph"]).exists():
            import faiss

            graph = faiss.read_index(str(self._path(names["graph"])))
        return Checkpoint(rows, positions, vectors, graph, len(changes))

    def vectors(self, version: Version) -> np.ndarray:
        if version.rows == 0:
            return np.zeros((0, version.dims), np.float32)
        return np.memmap(self._path(self._names(version)["vectors"]), dtype=np.float32,
                         mode="r", shape=(version.rows, version.dims))

    def changes(self, version: Version, start: int) -> list[Row]:
        """The changes logged in version's epoch from byte offset start to its end."""
        if version.changes_bytes <= start:
            return []
        with open(self._path(self._names(version)["changes"]), "rb") as log:
            log.seek(start)
            lines = log.read(version.changes_bytes - start).splitlines()
        return [(row, None if product is None else Product(**product))
                for row, product in map(json.loads, lines)]

    # --- writing (under the writer's lock) ---
    def append(self, version: Version, vectors: np.ndarray, changes: list[Row]) -> Version:
        """Add rows (their vectors, in row order) and deletions to the current epoch."""
        names = self._names(version)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._write_at(names["vectors"], version.rows * version.dims * 4, vectors.tobytes())
        logged = b"".join(json.dumps([row, None if product is None else product.model_dump()],
                                     separators=(",", ":")).encode() + b"\n"
                          for row, product in changes)
        self._write_at(names["changes"], version.changes_bytes, logged)
        return self._commit(replace(version, rows=version.rows + len(vectors),
                                    changes_bytes=version.changes_bytes + len(logged)))

    def save(self, rows: list[Product | None], vectors: np.ndarray | None, dims: int,
             graph, current: Version | None) -> Version:
        """A new checkpoint of every row. vectors None: current's vectors file already holds
        every row (rows were only appended or deleted since its checkpoint)."""
        epoch = uuid.uuid4().hex
        if vectors is None and current is not None and current.format == 2:
            generation = current.vectors
        else:
            generation = epoch
            self._replace(f"vectors.{generation}.f32",
                          np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        version = Version(epoch=epoch, vectors=generation, dims=dims, rows=len(rows))
        names = self._names(version)
        self._replace(names["products"], json.dumps(
            [None if p is None else p.model_dump() for p in rows]).encode())
        if graph is not None:
            import faiss

            faiss.write_index(graph, str(self._path("graph.tmp.faiss")))
            os.replace(self._path("graph.tmp.faiss"), self._path(names["graph"]))
        self._replace(names["changes"], b"")
        self._commit(version)
        self._remove_all_but(set(names.values()))
        return version

    def _remove_all_but(self, kept: set[str]) -> None:
        """The files of earlier checkpoints (and any a writer that died mid-checkpoint left),
        once the new one is committed."""
        stale = ("products.", "changes.", "graph.", "vectors.")
        for path in self.directory.iterdir():
            if path.name.startswith(stale) and path.name not in kept:
                path.unlink(missing_ok=True)

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
            "format": 2, "epoch": version.epoch, "vectors": version.vectors,
            "dims": version.dims, "rows": version.rows,
            "changes_bytes": version.changes_bytes}).encode())
        return version


def apply_changes(rows: list[Product | None], positions: dict[str, int],
                  changes: list[Row]) -> None:
    """Apply logged changes in order, keeping positions (product id -> its live row) in step."""
    for row, product in changes:
        if row < len(rows):
            before = rows[row]
            if before is not None and positions.get(before.product_id) == row:
                del positions[before.product_id]
            rows[row] = product
        else:
            rows.append(product)
        if product is not None:
            positions[product.product_id] = row
