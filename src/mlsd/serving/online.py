"""Stored features for online requests, read from the Feast online store in the model's order.

Reads go through the store's provider (``online_read``, one batched read per feature view), not
``FeatureStore.get_online_features``: that call rebuilds its plan and a response object on every
request (milliseconds), and it never applies a view's TTL online. Here an entity the store does
not know, a value older than its view's TTL and a null value all read as *missing*: the feature
gets the spec default and the response and a metric say so.

A store that cannot be read (Redis down, a network error, a read slower than ``timeout_s``)
degrades the same way: every stored feature is missing with reason ``unavailable`` and
``mlsd_online_store_errors_total{kind}`` counts the failure (an alert pages on it): ``unavailable``
when the store cannot be reached (refused, no route), ``timeout`` when it takes connections but
answers too slowly, ``error`` for anything else. The read runs in a worker thread and is waited
on for at most ``timeout_s``, because a store client may retry with backoff for seconds (redis-py
7 retries a refused connection for 10 s) and the request must not wait for it; a read cut off
that way is told apart by one TCP connection attempt to the store's address. After a failure the
store is left alone for ``retry_s`` (requests get defaults at once), then tried again, so the
service recovers by itself when the store is back. A store down at start-up is logged, naming
the store and the variable its address came from, and counted the same way. No pandas on this
path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlsd.errors import FeatureStoreError
from mlsd.serving import metrics
from mlsd.spec import ProblemSpec

if TYPE_CHECKING:
    from feast import FeatureStore

    from mlsd.serving.preflight import StoreAddress

log = logging.getLogger(__name__)

MissingReason = str  # "unknown" (no row), "expired" (older than ttl), "null", "unavailable" (read failed)


@dataclass(frozen=True)
class _View:
    """One feature view as the server reads it."""

    name: str
    table: Any  # feast.FeatureView
    join_keys: tuple[str, ...]
    key_dtypes: tuple[str, ...]
    fields: tuple[str, ...]
    defaults: tuple[Any, ...]
    ttl: timedelta | None


@dataclass
class FeatureRows:
    """Stored features of a batch of requests: ``values[feature][row]`` and what was missing."""

    values: dict[str, list[Any]]
    missing: list[list[str]]
    reasons: dict[tuple[str, MissingReason], int] = field(default_factory=dict)


def _python(value: Any) -> Any:
    """A Feast ValueProto as a Python value (None when unset)."""
    kind = value.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(value, kind)


WARM_UP_S = 5.0
PROBE_S = 0.2
"""Longest wait for a TCP connection to the store when a read was cut off (is it there at all?)."""


def _is_unreachable(exc: BaseException) -> bool:
    """A connection error of the store client (redis-py's ConnectionError is no OSError)."""
    return isinstance(exc, OSError) or any(c.__name__ == "ConnectionError" for c in type(exc).__mro__)


class OnlineFeatures:
    """Batched, TTL-aware reads of every stored feature of a spec from a Feast online store.

    Args:
        store: an open Feast store whose registry holds the spec's feature views (``kedro run``
            applied and materialized them).
        spec: the problem spec (views, entity keys, defaults).
        timeout_s: the longest a request waits for the store before it gets the defaults.
        retry_s: after a failed read, how long the store is not asked again.
        address: where a networked store listens (:func:`mlsd.serving.preflight.online_store_address`);
            None for a file store.

    Raises:
        FeatureStoreError: a view of the spec is not in the store's registry.
    """

    def __init__(
        self,
        store: FeatureStore,
        spec: ProblemSpec,
        timeout_s: float = 0.5,
        retry_s: float = 1.0,
        address: StoreAddress | None = None,
    ) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._entity_key, self._value = EntityKey, Value
        self._config = store.config
        self._provider = store._get_provider()  # the provider API: the same reads Feast itself does
        views = []
        for fv in spec.feature_views:
            if not fv.online:
                continue
            try:
                table = store.get_feature_view(fv.name)
            except Exception as exc:
                raise FeatureStoreError(
                    f"feature view {fv.name!r} is not in the Feast registry of {store.project!r}; "
                    "run `kedro run` (it applies and materializes the views) before serving"
                ) from exc
            entities = [spec.entity(e) for e in fv.entities]
            views.append(
                _View(
                    name=fv.name,
                    table=table,
                    join_keys=tuple(e.join_key for e in entities),
                    key_dtypes=tuple(e.dtype for e in entities),
                    fields=tuple(fv.fields),
                    defaults=tuple(col.default for col in fv.fields.values()),
                    ttl=fv.ttl if fv.ttl > timedelta(0) else None,
                )
            )
        self._views = views
        self._timeout_s, self._retry_s, self._skip_until = timeout_s, retry_s, 0.0
        self._address = address
        self._name = str(address) if address is not None else str(store.config.online_store.type)
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="mlsd-online-read")
        self._warm_up()

    def _warm_up(self) -> None:
        """One read of a made-up key per view before the first request, so the store client's
        connection and first-call setup (seconds on a busy machine) do not count against the first
        requests' ``timeout_s`` and serve them defaults. A store down at start-up is logged and
        counted (the alert pages on it while requests are scored on defaults); a store that takes
        no connection is not waited for, a slow one at most :data:`WARM_UP_S`."""
        row = {
            key: 0 if dtype == "int64" else ""
            for v in self._views
            for key, dtype in zip(v.join_keys, v.key_dtypes, strict=True)
        }
        down = self._address.unreachable(PROBE_S) if self._address is not None else None
        if down is not None:
            self._failed("unavailable", down, "at start-up")
            return
        future = self._pool.submit(self._online_reads, {v.name: [self._key(v, row)] for v in self._views})
        try:
            future.result(timeout=WARM_UP_S)
        except Exception as exc:  # a down store is the requests' business (defaults, counted)
            self._failed(*self._classify(exc, WARM_UP_S), "at start-up")

    def _classify(self, exc: BaseException, waited_s: float) -> tuple[str, str]:
        """What a failed or cut-off read says about the store: ``unavailable``, ``timeout`` or
        ``error``, and why."""
        if not isinstance(exc, TimeoutError):
            return ("unavailable" if _is_unreachable(exc) else "error"), f"{type(exc).__name__}: {exc}"
        # Cut off by us: a client retrying a refused connection looks the same as a slow store.
        down = self._address.unreachable(min(PROBE_S, self._timeout_s)) if self._address else None
        if down is not None:
            return "unavailable", f"no answer in {waited_s * 1000:.0f} ms; {down}"
        return "timeout", f"no answer in {waited_s * 1000:.0f} ms"

    def _failed(self, kind: str, why: str, when: str) -> None:
        """Count a failed read, leave the store alone for ``retry_s`` and say so in the log."""
        self._skip_until = time.monotonic() + self._retry_s
        metrics.STORE_ERRORS.labels(kind).inc()
        log.warning(
            "online store %s %s %s (%s); requests are scored on the spec defaults (named in "
            "missing_features), next try in %.1f s",
            self._name,
            {"unavailable": "cannot be reached", "timeout": "is too slow"}.get(kind, "failed a read"),
            when,
            why,
            self._retry_s,
        )

    def _key(self, view: _View, row: Mapping[str, Any]) -> Any:
        values = []
        for key, dtype in zip(view.join_keys, view.key_dtypes, strict=True):
            value = self._value()
            if dtype == "int64":
                value.int64_val = int(row[key])
            else:
                value.string_val = str(row[key])
            values.append(value)
        return self._entity_key(join_keys=list(view.join_keys), entity_values=values)

    def _online_reads(
        self, keys: dict[str, list[Any]], cut_off: threading.Event | None = None
    ) -> dict[str, list[Any]]:
        """One read per view, in turn; none once ``cut_off`` is set (the request gave up on a slow
        store, which is then left alone: the views not read yet are not asked for).

        Raises:
            TimeoutError: ``cut_off`` was set before every view was read.
        """
        rows = {}
        for view in self._views:
            if cut_off is not None and cut_off.is_set():
                raise TimeoutError("the request stopped waiting for the online store")
            rows[view.name] = self._provider.online_read(
                self._config, view.table, keys[view.name], list(view.fields)
            )
        return rows

    def _fetch_all(self, keys: dict[str, list[Any]]) -> dict[str, list[Any]] | None:
        """Every view's stored rows, or None when the store fails, is too slow or is being left alone."""
        if time.monotonic() < self._skip_until:
            return None
        cut_off = threading.Event()
        future = self._pool.submit(self._online_reads, keys, cut_off)
        try:
            return future.result(timeout=self._timeout_s)
        except Exception as exc:  # the client's own errors, or TimeoutError
            cut_off.set()  # still reading a slow store: it reads no further view
            future.cancel()  # still queued behind a read the client retries: never start it
            self._failed(*self._classify(exc, self._timeout_s), "on a request")
            return None

    def close(self) -> None:
        """Stop the read thread pool (a read still hanging in the store client is not waited for)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def read(self, rows: Sequence[Mapping[str, Any]], now: datetime | None = None) -> FeatureRows:
        """Every stored feature for each request row (which holds the entity keys).

        Missing values get the spec default; ``missing[i]`` names row i's defaulted features. A
        view whose read fails (the store is down) counts as missing for every row, reason
        ``unavailable``: the request is still answered, flagged, and the failure counted.
        """
        now = now or datetime.now(UTC)
        out = FeatureRows(values={}, missing=[[] for _ in rows])
        fetched = self._fetch_all({view.name: [self._key(view, row) for row in rows] for view in self._views})
        for view in self._views:
            found = fetched[view.name] if fetched is not None else [(None, None)] * len(rows)
            columns: list[list[Any]] = [[] for _ in view.fields]
            for i, (ts, values) in enumerate(found):
                reason = None
                if fetched is None:
                    reason = "unavailable"
                elif values is None or ts is None:
                    reason = "unknown"
                elif view.ttl is not None and now - ts > view.ttl:
                    reason = "expired"
                for j, name in enumerate(view.fields):
                    value = None if reason or values is None or name not in values else _python(values[name])
                    if value is None:
                        why = reason or "null"
                        out.missing[i].append(name)
                        out.reasons[(view.name, why)] = out.reasons.get((view.name, why), 0) + 1
                        value = view.defaults[j]
                    columns[j].append(value)
            for j, name in enumerate(view.fields):
                out.values[name] = columns[j]
        return out
