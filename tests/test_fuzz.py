"""Property-based fuzzing of the real service from its own OpenAPI document (schemathesis).

Schemathesis reads the document a real `bentoml serve` publishes and generates requests from
it: valid ones (which must be answered, never with a 5xx, in the documented response shape) and
invalid ones (wrong types, missing or extra fields, out-of-range values: each must be refused
with a 4xx). Over 1,000 cases run per session; every bug this found has a regression test in
tests/test_serving_units.py (nullable fields, the 400 ``detail`` shape).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from tests.conftest import served_copy, short_tmp_dir
from tests.server import Server, serving

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, negative_data_rejection]
"""No 5xx; a documented status answers in its documented schema and media type; invalid data is a 4xx."""

BUDGET = {  # (path, method, mode) -> generated cases; over 1,000 in all
    ("/predict", "POST", GenerationMode.POSITIVE): 300,
    ("/predict", "POST", GenerationMode.NEGATIVE): 300,
    ("/predict_batch", "POST", GenerationMode.POSITIVE): 150,
    ("/predict_batch", "POST", GenerationMode.NEGATIVE): 150,
    ("/rollout", "POST", GenerationMode.POSITIVE): 50,
    ("/rollout", "POST", GenerationMode.NEGATIVE): 50,
    ("/healthz", "GET", GenerationMode.POSITIVE): 1,
    ("/metrics", "GET", GenerationMode.POSITIVE): 1,
}


@pytest.fixture(scope="module")
def server(built_project: Path) -> Iterator[Server]:
    root = short_tmp_dir()
    try:
        with serving(served_copy(built_project, root / "p")) as srv:
            yield srv
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def statuses() -> Counter[tuple[str, str, int]]:
    """Every answer the fuzz run got, by (path, mode, status)."""
    return Counter()


@pytest.mark.parametrize(
    ("path", "method", "mode"), list(BUDGET), ids=[f"{m} {p} {g.value}" for p, m, g in BUDGET]
)
def test_generated_requests_get_no_5xx_and_documented_answers(
    server: Server, statuses: Counter[tuple[str, str, int]], path: str, method: str, mode: GenerationMode
) -> None:
    operation = schemathesis.openapi.from_url(f"{server.url}/docs.json")[path][method]
    cases = BUDGET[(path, method, mode)]
    answered: list[int] = []

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.url, timeout=30)
        answered.append(response.status_code)
        statuses[(path, mode.value, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    fuzz()
    assert answered
    if mode is GenerationMode.NEGATIVE and path.startswith("/predict"):
        assert set(answered) <= {400, 413, 415, 422}, Counter(answered)


def test_the_fuzz_run_covered_over_a_thousand_cases_both_ways(
    statuses: Counter[tuple[str, str, int]],
) -> None:
    """Runs after the parametrized run above (same module): the totals it promised."""
    assert sum(statuses.values()) >= 1000, statuses
    assert (
        sum(n for (path, mode, status), n in statuses.items() if mode == "positive" and status == 200) >= 400
    )
    assert (
        sum(n for (path, mode, status), n in statuses.items() if mode == "negative" and status >= 400) >= 400
    )
    assert not [key for key in statuses if key[2] >= 500]
