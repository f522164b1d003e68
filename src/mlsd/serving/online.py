"""Stored features for online requests, read from the Feast online store in the model's order.

Reads go through the store's provider (``online_read``, one batched read per feature view), not
``FeatureStore.get_online_features``: that call rebuilds its plan and a response object on every
request (milliseconds), and it never applies a view's TTL online. Here an entity the store does
not know, a value older than its view's TTL and a null value all read as *missing*: the feature
gets the spec default and the response and a metric say so. No pandas on this path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlsd.errors import FeatureStoreError
from mlsd.spec import ProblemSpec

if TYPE_CHECKING:
    from feast import FeatureStore

MissingReason = str  # "unknown" (no row for the entity), "expired" (older than ttl), "null"


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


class OnlineFeatures:
    """Batched, TTL-aware reads of every stored feature of a spec from a Feast online store.

    Args:
        store: an open Feast store whose registry holds the spec's feature views (``kedro run``
            applied and materialized them).
        spec: the problem spec (views, entity keys, defaults).

    Raises:
        FeatureStoreError: a view of the spec is not in the store's registry.
    """

    def __init__(self, store: FeatureStore, spec: ProblemSpec) -> None:
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

    def read(self, rows: Sequence[Mapping[str, Any]], now: datetime | None = None) -> FeatureRows:
        """Every stored feature for each request row (which holds the entity keys).

        Missing values get the spec default; ``missing[i]`` names row i's defaulted features.

        Raises:
            FeatureStoreError: the online store cannot be read (down, wrong profile).
        """
        now = now or datetime.now(UTC)
        out = FeatureRows(values={}, missing=[[] for _ in rows])
        for view in self._views:
            keys = [self._key(view, row) for row in rows]
            try:
                found = self._provider.online_read(self._config, view.table, keys, list(view.fields))
            except Exception as exc:
                raise FeatureStoreError(f"online read of view {view.name!r} failed: {exc}") from exc
            columns: list[list[Any]] = [[] for _ in view.fields]
            for i, (ts, values) in enumerate(found):
                reason = None
                if values is None or ts is None:
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
