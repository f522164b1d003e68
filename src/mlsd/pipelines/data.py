"""Raw data in, validated events out.

``generate`` writes the synthetic raw tables. ``inputs`` builds the events table and validates
raw tables and events together; the report is always saved, and only a passing report lets the
events and raw tables flow on, so a failure overwrites nothing downstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from kedro.pipeline import Pipeline, node, pipeline

from mlsd.pipelines import as_dict, load_partitions
from mlsd.problems import load_problem
from mlsd.spec import spec_from_mapping
from mlsd.validation import raise_if_failed, render_html, table_suite, validate_frames


def generate(problem: Mapping[str, Any], generator: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    spec = spec_from_mapping(problem)
    return load_problem(spec).generate(spec, as_dict(generator))


def build_events(problem: Mapping[str, Any], raw: Mapping[str, Any]) -> pd.DataFrame:
    spec = spec_from_mapping(problem)
    return load_problem(spec).build_events(spec, load_partitions(raw))


def validate_inputs(
    problem: Mapping[str, Any], raw: Mapping[str, Any], events: pd.DataFrame
) -> tuple[dict, str]:
    """Validate every spec table (raw ones and the events table); never raises on bad data."""
    spec = spec_from_mapping(problem)
    frames = {**load_partitions(raw), spec.events_table: events}
    report = validate_frames("inputs", frames, {t: table_suite(spec, t) for t in spec.tables})
    return report, render_html(report)


def accept(report: Mapping[str, Any], *data: Any) -> Any:
    """Pass the data on only if the report passed; otherwise stop the run naming each failure."""
    raise_if_failed(report)
    return data if len(data) > 1 else data[0]


def accept_inputs(report: Mapping[str, Any], raw: Mapping[str, Any], events: pd.DataFrame) -> Any:
    return accept(report, load_partitions(raw), events)


def generate_pipeline() -> Pipeline:
    return pipeline([node(generate, ["params:problem", "params:generator"], "raw", name="generate")])


def inputs_pipeline() -> Pipeline:
    return pipeline(
        [
            node(build_events, ["params:problem", "raw"], "events_candidate", name="build_events"),
            node(
                validate_inputs,
                ["params:problem", "raw", "events_candidate"],
                ["input_validation", "input_validation_html"],
                name="validate_inputs",
            ),
            node(
                accept_inputs,
                ["input_validation", "raw", "events_candidate"],
                ["valid_raw", "events"],
                name="accept_inputs",
            ),
        ]
    )
