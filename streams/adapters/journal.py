"""Which messages a worker has started and not finished, kept on local disk so that the record
outlives the process.

A message that kills its worker (the kernel's out-of-memory killer, a segfault in a native
library) is delivered again to the restarted worker, which dies again: a crash loop that no
in-process retry can see. Before a stage runs a message it records the start here; when the
stage returns, raises or is cancelled, the record goes. A record still there when the message
comes back means an earlier worker died while running it, and the runtime counts those deaths
(Runtime.handle fails the job once RESTYLE_CRASH_ATTEMPTS is reached).

The files live under the worker's state directory: a container restarted in its pod (an
emptyDir volume) or a worker restarted by `restyle up` finds them. Each journal has an identity
of its own (a random id kept beside its records), and what it holds when a process opens it
(`inherited`: the deaths of the processes before) is told to the other hosts at start
(streams/core/deaths.py), so a message that moves from host to host is counted across them.
Writes are plain writes, not fsynced: the point is surviving the process, and the kernel keeps
what a dead process wrote.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Iterable

log = logging.getLogger("restyle.journal")

# Records kept per stage and partition: a message handled by another worker never comes back
# here to be cleared, so the oldest records make way.
KEEP_PER_FILE = 64

# Where a journal keeps its identity (no record file starts with a dot).
IDENTITY_FILE = ".journal-id"

# Every journal open in this process, so that a deliberate exit (a broken GPU, a broker that
# takes no sends) can say that the messages in flight are not to blame.
OPEN: list["InFlightJournal"] = []


class InFlightJournal:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # file name -> {offset: starts that have not finished}
        self._records: dict[str, dict[int, int]] = {}
        # file name -> an open descriptor: rewritten in place (opening a file per write cost
        # ten times as much)
        self._files: dict[str, int] = {}
        self._lengths: dict[str, int] = {}
        self.identity = self._identity()
        # spot name -> starts that never finished, as the processes before this one left them
        # (not the files another live worker of the role on this machine writes: its
        # messages are in flight, not deaths)
        self.inherited: dict[str, int] = {
            spot_name_of(name, offset): starts
            for name in sorted(os.listdir(self.directory))
            if not name.startswith(".") and not self._written_by_a_live_process(name)
            for offset, starts in self._record(name).items()}
        OPEN.append(self)

    def _written_by_a_live_process(self, name: str) -> bool:
        # A writer holds a shared lock on the file for its life (_write); the kernel drops it
        # with the process.
        try:
            descriptor = os.open(self.directory / name, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(descriptor)

    def _identity(self) -> str:
        path = self.directory / IDENTITY_FILE
        try:
            return path.read_text().strip() or self._new_identity(path)
        except FileNotFoundError:
            return self._new_identity(path)

    @staticmethod
    def _new_identity(path: Path) -> str:
        identity = uuid.uuid4().hex[:16]
        path.write_text(identity)
        return identity

    def started(self, stage: str, topic: str, partition: int, offset: int) -> int:
        """Record that stage starts the message at (topic, partition, offset); return how many
        earlier starts of it never finished (0 for a message seen for the first time)."""
        name = _file_name(stage, topic, partition)
        record = self._record(name)
        earlier = record.get(offset, 0)
        record[offset] = earlier + 1
        for stale in sorted(record)[:-KEEP_PER_FILE]:
            del record[stale]
        self._write(name, record)
        return earlier

    def finished(self, stage: str, topic: str, partition: int, offset: int) -> None:
        """The stage is done with the message, however it ended (but for the process dying)."""
        name = _file_name(stage, topic, partition)
        record = self._record(name)
        if record.pop(offset, None) is not None:
            self._write(name, record)

    def release_all(self, blamed: Iterable[tuple[str, str, int, int]] = ()) -> None:
        """Forget every message in flight but the blamed ones ((stage, topic, partition,
        offset)): the process is about to exit on purpose, for a fault that is not theirs
        (their deaths are counted)."""
        kept: dict[str, set[int]] = {}
        for stage, topic, partition, offset in blamed:
            kept.setdefault(_file_name(stage, topic, partition), set()).add(offset)
        for name, record in self._records.items():
            innocent = [offset for offset in record if offset not in kept.get(name, ())]
            if innocent:
                for offset in innocent:
                    del record[offset]
                self._write(name, record)

    def _record(self, name: str) -> dict[int, int]:
        if name not in self._records:
            self._records[name] = self._read(name)
        return self._records[name]

    def _read(self, name: str) -> dict[int, int]:
        try:
            text = (self.directory / name).read_text()
            self._lengths[name] = len(text.encode())
            return {int(offset): int(starts) for offset, starts in json.loads(text).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError, OSError) as exc:  # cut short: start again
            log.warning("in-flight journal %s unreadable (%s): starting it afresh",
                        self.directory / name, exc)
            return {}

    def _write(self, name: str, record: dict[int, int]) -> None:
        if name not in self._files:
            self._files[name] = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT, 0o600)
            fcntl.flock(self._files[name], fcntl.LOCK_SH)  # this process writes it (inherited)
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


def _file_name(stage: str, topic: str, partition: int) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{stage}.{topic}.{partition}")


def spot_name(stage: str, topic: str, partition: int, offset: int) -> str:
    """A message as a stage handles it, named the same by every journal."""
    return spot_name_of(_file_name(stage, topic, partition), offset)


def spot_name_of(file_name: str, offset: int) -> str:
    return f"{file_name}@{offset}"
