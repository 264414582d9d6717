"""Which messages a worker has started and not finished, kept on local disk so that the record
outlives the process.

A message that kills its worker (the kernel's out-of-memory killer, a segfault in a native
library) is delivered again to the restarted worker, which dies again: a crash loop that no
in-process retry can see. Before a stage runs a message it records the start here; when the
stage returns, raises or is cancelled, the record goes. A record still there when the message
comes back means an earlier worker died while running it, and the runtime counts those deaths
(Runtime.handle fails the job once RESTYLE_CRASH_ATTEMPTS is reached).

The files live under the worker's state directory: a container restarted in its pod (an
emptyDir volume) or a worker restarted by `restyle up` finds them, in the slot its dead
predecessor held. Each slot has an identity of its own (a random id kept beside its records),
and what it holds when a process takes it (`inherited`: the deaths of the processes before) is
told to the other workers at start (streams/core/deaths.py), so a message that moves from
worker to worker, host to host, is counted across them.
Writes are plain writes, not fsynced: the point is surviving the process, and the kernel keeps
what a dead process wrote.
"""
from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger("restyle.journal")

# Records kept per stage and partition: a message handled by another worker never comes back
# here to be cleared, so the oldest records make way.
KEEP_PER_FILE = 64

# Where a slot keeps its identity and its lock (no record file starts with a dot).
IDENTITY_FILE = ".journal-id"
LOCK_FILE = ".lock"

# Every journal open in this process, so that a deliberate exit (a broken GPU, a broker that
# takes no sends) can say that the messages in flight are not to blame.
OPEN: list["InFlightJournal"] = []


class InFlightJournal:
    """A worker process's journal. Several processes of a role on one machine (`restyle up
    --gpu-workers 2`) share the role's directory, each in a slot of its own (slot-0, slot-1,
    ...): a process takes the first slot no live process holds (an exclusive lock the kernel
    drops with the process), so a worker restarted after a death takes over what the dead one
    left there, and two live processes never write the same files. Each slot is a journal
    with its own identity."""

    def __init__(self, directory: Path):
        self.root = Path(directory)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock, self.directory = self._take_slot()
        # file name -> {offset: starts that have not finished}
        self._records: dict[str, dict[int, int]] = {}
        # file name -> offsets this process started and has not finished
        self._mine: dict[str, set[int]] = {}
        # file name -> an open descriptor: rewritten in place (opening a file per write cost
        # ten times as much)
        self._files: dict[str, int] = {}
        self._lengths: dict[str, int] = {}
        self.identity = identity_of(self.directory)
        # identity -> slot, of this journal and of those unheld() read
        self._slots = {self.identity: self.directory}
        # spot name -> starts that never finished, as the processes before this one left them
        self.inherited = left_in(self.directory, self._record)
        OPEN.append(self)

    def _take_slot(self) -> tuple[int, Path]:
        for number in itertools.count():
            slot = self.root / f"slot-{number}"
            slot.mkdir(exist_ok=True)
            lock = lock_slot(slot)
            if lock is not None:
                return lock, slot

    def unheld(self) -> dict[str, dict[str, int]]:
        """The other slots no live process holds (a worker of the role that stopped for good,
        after a death): {their identity: {spot name: starts}}, to be told on their behalf."""
        left: dict[str, dict[str, int]] = {}
        for slot in sorted(self.root.glob("slot-*")):
            if slot == self.directory or not (slot / IDENTITY_FILE).exists():
                continue
            lock = lock_slot(slot)
            if lock is None:  # a live process's
                continue
            try:
                records = left_in(slot, lambda name, slot=slot: read_record(slot / name))
                if records:
                    left[identity_of(slot)] = records
                    self._slots[identity_of(slot)] = slot
            finally:
                os.close(lock)  # (which drops the lock)
        return left

    def written_at(self, identity: str, spot: str) -> float:
        """When the slot of `identity` (this one, or one unheld() read) last wrote the record
        that holds spot (0 where it has none)."""
        slot = self._slots.get(identity)
        try:
            return (slot / spot.rpartition("@")[0]).stat().st_mtime if slot else 0.0
        except OSError:
            return 0.0

    def forget(self, spot: str) -> None:
        """Drop an inherited message (by its spot name): it ran to its end elsewhere. Not one
        this process has started meanwhile (its start counts, and its end clears it)."""
        name, _, offset = spot.rpartition("@")
        if int(offset) in self._mine.get(name, ()):
            return
        record = self._record(name)
        if record.pop(int(offset), None) is not None:
            self._write(name, record)
        self.inherited.pop(spot, None)

    def close(self) -> None:
        """Let the slot go, as the process's end does."""
        for descriptor in self._files.values():
            os.close(descriptor)
        self._files.clear()
        os.close(self._lock)
        if self in OPEN:
            OPEN.remove(self)

    def started(self, stage: str, topic: str, partition: int, offset: int) -> int:
        """Record that stage starts the message at (topic, partition, offset); return how many
        earlier starts of it never finished (0 for a message seen for the first time)."""
        name = _file_name(stage, topic, partition)
        record = self._record(name)
        earlier = record.get(offset, 0)
        record[offset] = earlier + 1
        self._mine.setdefault(name, set()).add(offset)
        for stale in sorted(record)[:-KEEP_PER_FILE]:
            del record[stale]
        self._write(name, record)
        return earlier

    def finished(self, stage: str, topic: str, partition: int, offset: int) -> None:
        """The stage is done with the message, however it ended (but for the process dying)."""
        name = _file_name(stage, topic, partition)
        self._mine.get(name, set()).discard(offset)
        record = self._record(name)
        if record.pop(offset, None) is not None:
            self._write(name, record)

    def release_all(self, blamed: Iterable[tuple[str, str, int, int]] = ()) -> None:
        """Forget every message this process holds but the blamed ones ((stage, topic,
        partition, offset)): the process is about to exit on purpose, for a fault that is not
        theirs (their deaths are counted). What the processes before it left stays."""
        kept: dict[str, set[int]] = {}
        for stage, topic, partition, offset in blamed:
            kept.setdefault(_file_name(stage, topic, partition), set()).add(offset)
        for name, offsets in self._mine.items():
            innocent = [offset for offset in offsets if offset not in kept.get(name, ())]
            record = self._record(name)
            for offset in innocent:
                record.pop(offset, None)
            if innocent:
                self._write(name, record)

    def _record(self, name: str) -> dict[int, int]:
        if name not in self._records:
            self._records[name] = read_record(self.directory / name, self._lengths, name)
        return self._records[name]

    def _write(self, name: str, record: dict[int, int]) -> None:
        if name not in self._files:
            self._files[name] = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT, 0o600)
        # One write, padded with spaces (JSON ignores them) to cover what the last one wrote:
        # a process that dies at any moment leaves a whole record behind.
        data = json.dumps(record).encode().ljust(self._lengths.get(name, 0))
        os.pwrite(self._files[name], data, 0)
        self._lengths[name] = len(data)


def release_in_flight(blamed: Iterable[tuple[str, str, int, int]] = ()) -> None:
    """A deliberate exit: no message this process holds is to blame for it, but those named
    in blamed ((stage, topic, partition, offset))."""
    blamed = list(blamed)
    for journal in OPEN:
        try:
            journal.release_all(blamed)
        except OSError:  # exiting anyway; the worst case is a count one too high
            log.warning("could not clear the in-flight journal in %s", journal.directory)


def identity_of(slot: Path) -> str:
    """The slot's identity, made by the first process that held it (under its lock)."""
    path = slot / IDENTITY_FILE
    try:
        identity = path.read_text().strip()
    except FileNotFoundError:
        identity = ""
    if not identity:
        identity = uuid.uuid4().hex[:16]
        path.write_text(identity)
    return identity


def lock_slot(slot: Path) -> int | None:
    """The slot's lock, held exclusively (a descriptor to close to let it go), or None where a
    live process holds it (the kernel drops a process's locks with it)."""
    lock = os.open(slot / LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return lock
    except BlockingIOError:
        os.close(lock)
        return None


def left_in(slot: Path, record_of: Callable[[str], dict[int, int]]) -> dict[str, int]:
    """{spot name: starts that never finished} in a slot's record files (record_of(name))."""
    return {spot_name_of(name, offset): starts
            for name in sorted(n for n in os.listdir(slot) if not n.startswith("."))
            for offset, starts in record_of(name).items()}


def read_record(path: Path, lengths: dict[str, int] | None = None,
                name: str = "") -> dict[int, int]:
    """{offset: starts} as a file holds it ({} for none, or one cut short)."""
    try:
        text = path.read_text()
        if lengths is not None:
            lengths[name] = len(text.encode())
        return {int(offset): int(starts) for offset, starts in json.loads(text).items()}
    except FileNotFoundError:
        return {}
    except (ValueError, AttributeError, OSError) as exc:  # cut short: start again
        log.warning("in-flight journal %s unreadable (%s): starting it afresh", path, exc)
        return {}


def _file_name(stage: str, topic: str, partition: int) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{stage}.{topic}.{partition}")


def spot_name(stage: str, topic: str, partition: int, offset: int) -> str:
    """A message as a stage handles it, named the same by every journal."""
    return spot_name_of(_file_name(stage, topic, partition), offset)


def spot_name_of(file_name: str, offset: int) -> str:
    return f"{file_name}@{offset}"
