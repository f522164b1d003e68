"""The prediction log: one JSON line per scored request (and per shadow score), written durably.

The request path only puts a record on a queue; a writer thread takes whatever has queued,
writes it as JSON lines in one ``write``, flushes and fsyncs, then waits at most ``flush_ms``
for more. ``close`` drains the queue, so a clean shutdown loses nothing. Each server process
writes its own file (``predictions-<start>-<pid>.jsonl``) so workers never interleave lines; a
process killed mid-write leaves at most one partial last line, which :func:`read_log` skips.
A write the disk refuses (full, read-only, I/O error) never fails a request: the batch is counted
as lost (``on_lost``, the service's ``mlsd_prediction_log_lost_total`` and its alert) and logged
as an error, and the writer goes on with the next batch.

A record is ``{request_id, ts, routing_key, variant, model_tag, served, fallback, score,
latency_ms, model_ms, model_cpu_ms, entities, features, missing}`` (``latency_ms``: the whole
request; ``model_ms``: the call of the model that produced the score; ``model_cpu_ms``: that
call's CPU time on its thread, the model's own cost): ``request_id`` joins delayed
feedback, ``features`` is the exact vector the model saw (spec order), ``served`` is false for
shadow scores, and a canary-served record also has ``stable_score`` (what stable scored the same
request: the canary analysis compares the two on the same requests). A retrieval record also has
``items`` and ``scores`` (the ranked list; ``score`` is its top score).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PATTERN = "predictions-*.jsonl"
MAX_BATCH = 4096  # records per write, so one write stays small under sustained load


class PredictionLog:
    """Append-only JSONL writer fed through a queue (thread-safe ``append``).

    Args:
        folder: where the log files go (created).
        flush_ms: longest a record waits in memory before it is on disk.
        on_write: called after each durable write with the records written and those still queued.
        on_lost: called with the number of records of each batch a failed write lost.
    """

    def __init__(
        self,
        folder: Path,
        flush_ms: float = 200,
        on_write: Callable[[int, int], None] | None = None,
        on_lost: Callable[[int], None] | None = None,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.path = folder / f"predictions-{stamp}-{os.getpid()}.jsonl"
        self._file = self.path.open("ab", buffering=0)  # unbuffered: a failed write is not retried later
        self._torn = False  # the last write failed, maybe half done: the next one starts a new line
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._flush_s = flush_ms / 1000
        self._on_write, self._on_lost = on_write, on_lost
        self.lost = 0
        self._closed = False
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="mlsd-prediction-log", daemon=True)
        self._thread.start()

    def append(self, record: dict[str, Any]) -> None:
        """Queue one record (never blocks on disk)."""
        self._queue.put(record)

    def _drain(self, first: dict[str, Any] | None) -> tuple[list[dict[str, Any]], bool]:
        batch, stop = [], first is None
        if first is not None:
            batch.append(first)
        while len(batch) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, stop
            if item is None:
                stop = True
            else:
                batch.append(item)
        return batch, stop

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in batch)
        payload = memoryview(("\n" if self._torn else "").encode() + text.encode())
        self._torn = True
        while payload:
            payload = payload[self._file.write(payload) :]
        os.fsync(self._file.fileno())
        self._torn = False
        self.written += len(batch)
        if self._on_write is not None:
            self._on_write(len(batch), self._queue.qsize())

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=self._flush_s)
            except queue.Empty:
                continue
            batch, stop = self._drain(first)
            try:
                self._write(batch)
            except (OSError, TypeError, ValueError):
                self.lost += len(batch)
                log.exception("prediction log: %d records could not be written to %s", len(batch), self.path)
                if self._on_lost is not None:
                    self._on_lost(len(batch))

    def close(self) -> None:
        """Write everything queued so far and close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._file.close()


def read_log(folder: Path) -> Iterator[dict[str, Any]]:
    """Every complete record in ``folder``'s log files, oldest file first.

    Skipped, with a warning: a partial last line (a process killed mid-write) and a line a failed
    write left half done (the writer counted those records as lost).
    """
    for path in sorted(folder.glob(PATTERN)):
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if not line.endswith("\n"):
                    log.warning("prediction log %s: skipping a partial last line", path)
                    continue
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    log.warning("prediction log %s:%d: skipping a torn line (a failed write)", path, number)
