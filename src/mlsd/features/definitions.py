"""Feast objects (entities, sources, feature views, a feature service) built from the spec.

The same function feeds the Kedro ``apply`` node and ``feature_repo/definitions.py`` (for
``feast apply`` by hand), so the registry never disagrees with the spec.
"""

from __future__ import annotations

from typing import Any

from mlsd.spec import ProblemSpec

TIMESTAMP_FIELD = "event_timestamp"


def feast_objects(spec: ProblemSpec, source_dir: str) -> dict[str, Any]:
    """Every Feast object of the spec, by a unique Python name.

    Args:
        spec: the problem spec.
        source_dir: folder of the feature tables (``<source>.parquet``); a relative path is
            resolved by Feast against the feature repo.
    """
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Bool, Float32, Float64, Int64, String, UnixTimestamp

    feast_types = {
        "int64": Int64,
        "float32": Float32,
        "float64": Float64,
        "string": String,
        "bool": Bool,
        "timestamp": UnixTimestamp,
    }
    value_types = {"int64": ValueType.INT64, "string": ValueType.STRING}
    entities = {
        e.name: Entity(
            name=e.name, join_keys=[e.join_key], value_type=value_types[e.dtype], description=e.description
        )
        for e in spec.entities
    }
    objects: dict[str, Any] = {f"entity_{name}": entity for name, entity in entities.items()}
    views: list[Any] = []
    for fv in spec.feature_views:
        source = FileSource(
            name=f"{fv.source}_source",
            path=f"{source_dir.rstrip('/')}/{fv.source}.parquet",
            timestamp_field=TIMESTAMP_FIELD,
        )
        keys = [spec.entity(name) for name in fv.entities]
        schema = [Field(name=e.join_key, dtype=feast_types[e.dtype]) for e in keys]
        schema += [Field(name=name, dtype=feast_types[col.dtype]) for name, col in fv.fields.items()]
        view = FeatureView(
            name=fv.name,
            entities=[entities[name] for name in fv.entities],
            ttl=fv.ttl,
            schema=schema,
            source=source,
            online=fv.online,
            description=fv.description,
        )
        objects[f"source_{fv.source}"] = source
        objects[f"view_{fv.name}"] = view
        views.append(view)
    objects["feature_service"] = FeatureService(name=spec.feature_service, features=views)
    return objects
