"""Validated data in, features out: feature tables, Feast registry, training set, online store.

The training set is validated before it is saved, and the online store is loaded only after
it passed, so a failed check leaves the last good training set and online store in place. In the
whole run (``kedro run``) the online store, which the server reads, waits for more: a model
registered from this training set (:func:`online_pipeline` with ``after``), so a run whose
model fails a gate leaves serving's features as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from kedro.pipeline import Pipeline, node, pipeline

from mlsd.errors import FeatureStoreError
from mlsd.features import FeatureStoreParams, apply_definitions, materialize, open_store, training_set
from mlsd.features.definitions import TIMESTAMP_FIELD
from mlsd.pipelines import as_dict, load_partitions
from mlsd.pipelines.data import accept
from mlsd.problems import load_problem
from mlsd.spec import ProblemSpec, spec_from_mapping
from mlsd.validation import render_html, training_set_suite, validate_frames


def _check_feature_tables(spec: ProblemSpec, tables: Mapping[str, pd.DataFrame]) -> None:
    """Every view's source exists with its keys, timestamp and fields (or say which is missing)."""
    problems = []
    for fv in spec.feature_views:
        table = tables.get(fv.source)
        if table is None:
            problems.append(f"feature table {fv.source!r} (view {fv.name}) was not produced")
            continue
        want = [spec.entity(e).join_key for e in fv.entities] + [TIMESTAMP_FIELD, *fv.fields]
        lacking = [c for c in want if c not in table]
        if lacking:
            problems.append(f"feature table {fv.source!r} lacks columns {lacking}")
    if problems:
        raise FeatureStoreError(f"{spec.problem_module}.build_feature_tables: " + "; ".join(problems))


def build_feature_tables(
    problem: Mapping[str, Any], params: Mapping[str, Any], raw: Mapping[str, Any], events: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    spec = spec_from_mapping(problem)
    tables = load_problem(spec).build_feature_tables(spec, load_partitions(raw), events, as_dict(params))
    _check_feature_tables(spec, tables)
    return tables


def apply_feature_store(
    problem: Mapping[str, Any], params: Mapping[str, Any], feature_tables: Mapping[str, Any]
) -> dict[str, Any]:
    """Register the spec's Feast objects once the feature tables they read are written."""
    spec = spec_from_mapping(problem)
    p = FeatureStoreParams.model_validate(as_dict(params))
    summary = apply_definitions(open_store(p), spec, p.source_dir)
    return {**summary, "feature_tables": sorted(feature_tables)}


def build_training_set(
    problem: Mapping[str, Any], params: Mapping[str, Any], events: pd.DataFrame, registry: Mapping[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    spec = spec_from_mapping(problem)
    frame, missing = training_set(open_store(as_dict(params)), spec, events)
    return frame, {"project": registry["project"], "rows": len(frame), "missing_by_feature": missing}


def validate_training_set(
    problem: Mapping[str, Any], candidate: pd.DataFrame, events: pd.DataFrame
) -> tuple[dict, str]:
    spec = spec_from_mapping(problem)
    suite = {"training_set": training_set_suite(spec, n_events=len(events))}
    report = validate_frames("training_set", {"training_set": candidate}, suite)
    return report, render_html(report)


def materialize_online(
    problem: Mapping[str, Any],
    params: Mapping[str, Any],
    accepted: pd.DataFrame,
    registered: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load the online store up to now, after the training set built from it passed validation
    (and, given ``registered``, after a model trained on it was registered)."""
    spec = spec_from_mapping(problem)
    summary = materialize(open_store(as_dict(params)), spec, end=datetime.now(UTC))
    after = {} if registered is None else {"after_model": registered.get("tag")}
    return {**summary, "validated_training_rows": len(accepted), **after}


def online_pipeline(after: str | None = None) -> Pipeline:
    """The ``materialize_online`` node; with ``after`` (a dataset, e.g. ``registered_model``) it
    runs only once that exists, so a failure before it leaves the online store untouched."""
    inputs = ["params:problem", "params:feature_store", "training_set", *([after] if after else [])]
    return pipeline([node(materialize_online, inputs, "online_store", name="materialize_online")])


def create_pipeline(materialize: bool = True) -> Pipeline:
    """Feature tables, Feast registry and the validated training set; with ``materialize`` also
    the online store (``kedro run --pipelines features``: right after the training set passed)."""
    offline = pipeline(
        [
            node(
                build_feature_tables,
                ["params:problem", "params:features", "valid_raw", "events"],
                "feature_tables",
                name="build_feature_tables",
            ),
            node(
                apply_feature_store,
                ["params:problem", "params:feature_store", "feature_tables"],
                "feature_registry",
                name="apply_feature_store",
            ),
            node(
                build_training_set,
                ["params:problem", "params:feature_store", "events", "feature_registry"],
                ["training_set_candidate", "training_set_missing"],
                name="build_training_set",
            ),
            node(
                validate_training_set,
                ["params:problem", "training_set_candidate", "events"],
                ["training_set_validation", "training_set_validation_html"],
                name="validate_training_set",
            ),
            node(
                accept,
                ["training_set_validation", "training_set_candidate"],
                "training_set",
                name="accept_training_set",
            ),
        ]
    )
    return offline + online_pipeline() if materialize else offline
