"""The whole loop on one machine, for real: train v1 -> serve -> simulate -> drift report; a v2 fit
to shuffled labels forced onto a 20% canary -> simulate -> `kedro run --pipelines monitoring` rolls
it back; the world changes (users click a third as often) -> `kedro run` trains v2 on it, which
starts as a 50% canary by itself -> simulate -> the monitoring pipeline promotes it.

One `bentoml serve` runs through the module; the monitoring pipeline applies the canary verdict
(conf/local: monitoring.apply_canary_verdict). Tests run in file order: the first two need v1's
world, the last changes it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlsd.registry import ModelRegistry
from mlsd.serving.rollout import read_rollout
from tests.conftest import SMALL, kedro_run, mlsd_cli, served_copy, short_tmp_dir
from tests.server import Server, logged_within, post, served_logged, serving

pytestmark = pytest.mark.slow

# The changed world: the same users and ads, a click rate of ~1% instead of 3%, and three times
# the impressions (so the small-data gate's ~100 holdout clicks are there at the lower rate).
CHANGED = (
    "generator.n_impressions=60000,generator.impressions_per_user=60,generator.impressions_per_ad=1200,"
    "generator.target_ctr=0.012"
)
SHIFTED = {"age", "device", "position"}  # what the covariate_shift scenario moves (the problem module)
REPORTS = Path("data/08_reporting")


@pytest.fixture(scope="module")
def project(built_project: Path) -> Iterator[Path]:
    root = short_tmp_dir()
    project = served_copy(built_project, root / "p")
    # At 20k impressions an ad's 7-day CTR rests on ~200 impressions and moves ~0.1 (normed
    # Wasserstein) between daily snapshots with no change in the world; the test's tolerance for
    # the stored CTR features is 0.15 (conf/base keeps 0.1 for full-size data).
    noisy = dict.fromkeys(["user_ctr_7d", "ad_ctr_7d", "uc_ctr_7d"], 0.15)
    local = {
        "monitoring": {"apply_canary_verdict": True, "column_thresholds": noisy},
        # The shuffled canary's ~10k requests at a 3% click rate carry ~300 clicks: its AUC is
        # compared (from 150 on). The changed world's canary has ~110 clicks, where DeLong's paired
        # AUC difference has a standard error of ~0.019: v1 and v2 rank its requests alike
        # (expected AUC against the simulator's true P(click) 0.681 and 0.678 on one run) yet read
        # 0.650 vs 0.624 (p = 0.083) on another run's clicks; past the 0.02 margin at p < 0.05 by
        # chance in ~7% of runs. Its promotion is decided by the paired log loss alone.
        "canary_analysis": {"min_requests": 500, "min_feedback": 500, "min_positives": 150},
        "serving": {"reload_s": 0.2},
    }
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(local))
    yield project
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(project: Path) -> Iterator[Server]:
    with serving(project) as srv:
        yield srv


def simulate(project: Path, server: Server, scenario: str, count: int, seed: int, params: str) -> None:
    before = served_logged(project)
    result = mlsd_cli(
        project, "simulate", "--url", server.url, "--count", str(count), "--rate", "500",
        "--concurrency", "8", "--scenario", scenario, "--seed", str(seed), "--params", params,
        timeout=60 + count / 100,  # at least 5x the time the requested rate needs
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    logged_within(project, before, count)


def monitor(project: Path, *params: str) -> dict[str, Any]:
    extra = ("--params", ",".join(params)) if params else ()
    result = kedro_run(project, "--pipelines", "monitoring", *extra)
    assert result.returncode == 0, result.output[-4000:]
    return json.loads((project / REPORTS / "drift.json").read_text())


def report(project: Path, name: str) -> dict[str, Any]:
    return json.loads((project / REPORTS / name).read_text())


def registry(project: Path) -> ModelRegistry:
    return ModelRegistry(project / "data" / "06_models" / "bentoml", "ad_click")


def start_canary(project: Path, server: Server, tag: str) -> None:
    result = mlsd_cli(project, "rollout", "start", "--canary", tag, "--percent", "20")
    assert result.returncode == 0, result.stderr
    status, body = post(f"{server.url}/rollout", {})
    assert status == 200, body
    assert body["canary"]["tag"] == tag


def test_covariate_shift_flags_exactly_the_shifted_features(project: Path, server: Server) -> None:
    simulate(project, server, "none", 1500, seed=1, params=SMALL)
    calm = monitor(project)  # the default hour: nothing was served before this traffic
    calm_end = time.time()  # every calm request is logged (simulate waits for it): none after this
    simulate(project, server, "covariate_shift", 1500, seed=2, params=SMALL)
    shifted = monitor(project, f"monitoring.since={calm_end}")  # the shifted traffic only

    assert calm["rows"]["current"] == 1500
    assert shifted["rows"]["current"] == 1500  # the window holds the shifted traffic only
    scores = {c: round(v["score"], 3) for c, v in shifted["columns"].items()}
    assert set(shifted["drifted_columns"]) == SHIFTED, scores
    assert calm["drifted_columns"] == [], {c: v["score"] for c, v in calm["columns"].items()}
    for column in SHIFTED:  # clearly past the threshold, and well past the same column unshifted
        assert shifted["columns"][column]["score"] > 1.3 * shifted["columns"][column]["threshold"]
        assert shifted["columns"][column]["score"] > 2 * calm["columns"][column]["score"]
    # 3 of 8 columns is past the spec's 0.3: retraining is called for, and says why.
    assert shifted["drifted_share"] == pytest.approx(3 / 8)
    assert shifted["retrain"]["needed"] is True
    assert shifted["retrain"]["reasons"][0].startswith("data drift: 3/8 columns drifted")
    assert report(project, "retrain.json")["needed"] is True
    assert calm["retrain"]["needed"] is False
    # Online quality of stable from the simulator's feedback, and the Evidently report itself.
    stable = shifted["quality"]["stable"]
    assert stable["labelled"] == 1500
    assert 0.55 < stable["auc"] < 0.95
    html = (project / REPORTS / "drift.html").read_text()
    assert all(column in html for column in shifted["columns"])
    assert "Wasserstein" in html
    # The report opens with what it decided: the verdict, the limit and the window it looked at.
    assert "Drift: 3 of 8 columns drifted (38%; " in html
    assert "the limit is 30%" in html
    assert "1500 served requests, against the training set&#x27;s last 2d" in html
    assert html.count("<body") == 1
    assert '<body><section id="mlsd-headline"' in html  # first in the page's body
    assert len(shifted["snapshots"]) == 2  # drift + stable's quality


def test_a_v2_fit_to_shuffled_labels_is_rolled_back(project: Path, server: Server) -> None:
    stable = registry(project).stable()
    path = project / "data" / "05_model_input" / "training_set.parquet"
    original = path.read_bytes()
    frame = pd.read_parquet(path)
    fit = frame["ts"] < pd.Timestamp(report(project, "split.json")["holdout_start"])  # holdout stays true
    frame.loc[fit, "clicked"] = np.random.default_rng(0).permutation(frame.loc[fit, "clicked"].to_numpy())
    frame.to_parquet(path)
    try:
        result = kedro_run(project, "--pipelines", "train")
    finally:
        path.write_bytes(original)
    assert result.returncode != 0  # the gates refuse it; an operator forces it onto a canary anyway
    assert "nothing was registered" in result.text
    worse = registry(project).register(
        (project / "data" / "06_models" / "candidate.onnx").read_bytes(), {"note": "shuffled labels"}, {}
    )

    start_canary(project, server, worse)
    # ~10k canary requests, ~300 clicks: DeLong's paired test then separates a near-chance ranking
    # from stable's (AUC ~0.6 at this data size; the AUC noise is ~0.02 per arm).
    simulate(project, server, "none", 50_000, seed=4, params=SMALL)
    monitor(project)

    verdict = report(project, "canary_analysis.json")
    print(json.dumps(verdict, indent=1))  # shown in full when an assertion below fails
    assert verdict["decision"] == "rollback", verdict
    assert verdict["applied"] is True
    # Fit to noise it ranks near chance: DeLong on the same requests (log loss may say so too).
    assert any(r.startswith(("ranking", "online metric")) for r in verdict["reasons"])
    # Near chance on the same requests, below stable (whose own AUC on ~180 clicks is ~0.6 +- 0.03).
    assert verdict["tests"]["auc_canary"] < min(0.6, verdict["tests"]["auc_stable"])
    assert registry(project).stable() == stable
    assert read_rollout(project / "deployment" / "rollout.yaml").canary is None


# The promotion's size. v1 scores the changed world 2.5x too high (mean score 0.030 where clicks
# are 0.012), so on a canary request without a click v2's log loss is ~0.02 lower than v1's and
# on a click ~0.9 higher: the paired difference has a mean of about -0.008 (-0.0076 against the
# simulator's true P(click), -0.0088 and -0.0091 on the clicks of two runs) and a standard
# deviation of 0.118, the rare clicks. Promotion needs the mean + 1.645 SE under the 0.002 margin.
# At 20% of 10,000 requests (~2,000 canary requests, ~24 clicks) SE = 0.118 / sqrt(2000) = 0.0026:
# the expected mean is only ~2 SE from undecided, and which ~200 of the 1,000 users are canary is
# re-drawn by the new tag's hash every run. At 50% of 20,000 (~10,200 canary requests from ~500
# users, ~110 clicks) SE = 0.0012 (measured 0.00117 and 0.00119): ~6.5 SE from undecided.
CANARY_PERCENT, CANARY_REQUESTS = 50, 20_000


def test_v2_of_the_changed_world_starts_as_canary_and_is_promoted(project: Path, server: Server) -> None:
    v1 = registry(project).stable()
    # v2: the default pipeline on the changed world's data; registered, it starts as the canary.
    result = kedro_run(project, "--params", f"{CHANGED},registry.canary_percent={CANARY_PERCENT}")
    assert result.returncode == 0, result.output[-4000:]
    registered = report(project, "registered_model.json")
    v2 = registered["tag"]
    assert v2 != v1
    assert registry(project).stable() == v1  # a new version waits as a candidate...
    assert registered["canary"]["percent"] == CANARY_PERCENT  # ...on that share of users
    canary = read_rollout(project / "deployment" / "rollout.yaml").canary
    assert canary is not None
    assert (canary.tag, canary.percent) == (v2, CANARY_PERCENT)
    status, body = post(f"{server.url}/rollout", {})  # reload now rather than within reload_s
    assert status == 200, body
    assert body["canary"]["tag"] == v2

    simulate(project, server, "none", CANARY_REQUESTS, seed=3, params=CHANGED)
    monitor(project)

    verdict = report(project, "canary_analysis.json")
    print(json.dumps(verdict, indent=1))
    assert verdict["decision"] == "promote", verdict
    assert verdict["applied"] is True
    assert verdict["canary"]["requests"] > 0.4 * CANARY_REQUESTS
    assert verdict["tests"]["paired_requests"] > 0.4 * CANARY_REQUESTS
    assert "latency" not in verdict["failed"]  # v2 is a tree ensemble of v1's size
    assert verdict["tests"]["log_loss_diff"] < 0  # v2 is better on the same requests
    assert verdict["canary"]["mean_score"] < 0.8 * verdict["stable"]["mean_score"]  # the lower rate
    assert registry(project).stable() == v2
    assert read_rollout(project / "deployment" / "rollout.yaml").canary is None
    status = json.loads(mlsd_cli(project, "rollout", "status").stdout)
    assert status["canary"] is None
    assert status["stable"].startswith(v2)
