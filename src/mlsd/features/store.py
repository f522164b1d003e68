"""Feast operations: open the store for a profile, apply, build training sets, materialize, read.

Feast is imported inside each function: ``import feast`` costs seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel, ConfigDict

from mlsd.errors import ConfigError, FeatureStoreError
from mlsd.features.definitions import TIMESTAMP_FIELD, feast_objects
from mlsd.spec import ProblemSpec

if TYPE_CHECKING:
    from feast import FeatureStore


class FeatureStoreParams(BaseModel):
    """conf/<env>/parameters.yml ``feature_store:`` block: which Feast profile to use."""

    model_config = ConfigDict(extra="forbid")

    repo_path: Path = Path("feature_repo")
    config_file: str = "feature_store.yaml"
    source_dir: str = "../data/04_feature"


def open_store(params: FeatureStoreParams | Mapping[str, Any]) -> FeatureStore:
    """Open the Feast store of a profile (its feature_store yaml inside the repo).

    Raises:
        ConfigError: if the repo or the yaml file does not exist, or the yaml is invalid.
    """
    from feast import FeatureStore

    p = params if isinstance(params, FeatureStoreParams) else FeatureStoreParams.model_validate(dict(params))
    yaml_path = p.repo_path / p.config_file
    if not yaml_path.is_file():
        raise ConfigError(
            f"feature_store.config_file: {yaml_path} does not exist; "
            "check feature_store.repo_path/config_file in conf/<env>/parameters.yml"
        )
    try:
        return FeatureStore(repo_path=str(p.repo_path), fs_yaml_file=yaml_path)
    except Exception as exc:  # Feast raises many types for a bad yaml; name the file.
        raise ConfigError(f"{yaml_path}: invalid Feast configuration: {exc}") from exc


def apply_definitions(store: FeatureStore, spec: ProblemSpec, source_dir: str) -> dict[str, Any]:
    """Register the spec's Feast objects; return a summary of what the registry holds."""
    objects = feast_objects(spec, source_dir)
    try:
        store.apply(list(objects.values()))
    except Exception as exc:
        raise FeatureStoreError(f"feast apply failed for project {store.project!r}: {exc}") from exc
    return {
        "project": store.project,
        "entities": sorted(e.name for e in store.list_entities()),
        "feature_views": sorted(v.name for v in store.list_feature_views()),
        "feature_services": sorted(s.name for s in store.list_feature_services()),
    }


def fill_defaults(spec: ProblemSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Fill missing feature values with the spec defaults (as the server does); count them."""
    missing = {}
    frame = frame.copy()
    for name, col in spec.feature_fields().items():
        mask = frame[name].isna()
        missing[name] = int(mask.sum())
        if col.default is not None and missing[name]:
            frame.loc[mask, name] = col.default
        if col.dtype in ("int64", "float32", "float64") and col.default is not None:
            frame[name] = frame[name].astype(col.dtype)
    return frame, missing


def training_set(
    store: FeatureStore, spec: ProblemSpec, events: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Point-in-time-correct training set: each event gets the feature values known at its time.

    Feast 0.67's file offline store loses rows in two cases: an entity whose feature rows all lie
    outside the TTL window (its TTL filter runs after a left join), and entity rows that share
    join keys and timestamp. So each view is joined on its unique (keys, timestamp) pairs and
    the result is left-merged back onto the events on those columns, which keeps every event.

    Returns:
        The events (keys, context, label, truth) joined with every feature, in the events' order,
        with missing values filled from the spec defaults; and the missing count per feature.

    Raises:
        FeatureStoreError: if Feast fails or returns a row twice.
    """
    keep = [c for c in events.columns if events[c].dtype.kind != "M" or c == spec.label.timestamp]
    joined = events[keep].rename(columns={spec.label.timestamp: TIMESTAMP_FIELD})
    for fv in spec.feature_views:
        on = [*(spec.entity(e).join_key for e in fv.entities), TIMESTAMP_FIELD]
        refs = [f"{fv.name}:{name}" for name in fv.fields]
        try:
            part = store.get_historical_features(
                entity_df=joined[on].drop_duplicates(), features=refs
            ).to_df()
        except Exception as exc:
            raise FeatureStoreError(f"point-in-time join of view {fv.name!r} failed: {exc}") from exc
        if part.duplicated(on).any():
            raise FeatureStoreError(f"point-in-time join of view {fv.name!r} returned an entity row twice")
        joined = joined.merge(part[[*on, *fv.fields]], on=on, how="left", validate="many_to_one")
    joined = joined.rename(columns={TIMESTAMP_FIELD: spec.label.timestamp})
    return fill_defaults(spec, joined)


def materialize(store: FeatureStore, spec: ProblemSpec, end: datetime) -> dict[str, Any]:
    """Load the online store with every view's whole history up to ``end``.

    Each run rewrites the feature tables whole, so the online store is reloaded whole: an
    incremental load starts where the last one ended and would keep the values of an earlier run
    for any span the new tables rewrote (a rerun on regenerated or corrected data served the old
    world's features; tests/test_monitoring_loop.py trains v2 on a changed world). A first
    ``materialize_incremental`` would also start at now - ttl and could silently load nothing.
    """
    views = sorted(v.name for v in store.list_feature_views() if v.online)
    try:
        store.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=end, feature_views=views)
    except Exception as exc:
        raise FeatureStoreError(f"materialization failed: {exc}") from exc
    return {"project": store.project, "end": end.isoformat(), "views": views}


def online_features(
    store: FeatureStore, spec: ProblemSpec, entity_rows: Sequence[Mapping[str, Any]]
) -> dict[str, list[Any]]:
    """Read every feature for the given entity rows from the online store (None where missing)."""
    service = store.get_feature_service(spec.feature_service)
    rows = [dict(row) for row in entity_rows]
    return store.get_online_features(features=service, entity_rows=rows).to_dict()
