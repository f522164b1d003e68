"""Ad click prediction: a synthetic world with a known click probability, and its features.

The world: users (age, country, device) fall into segments (age band x device); each segment has
its own affinity for each ad category (the cross a model must learn); users have a propensity
and ads a quality (what CTR history features estimate); lower slots and night hours are clicked
less. ``true_p`` = sigmoid(intercept + propensity + quality + affinity + position + hour) is
stored with every impression, so the best achievable AUC / log loss (the oracle) is known.

Scenarios shift the world for monitoring work: ``covariate_shift`` changes who arrives (older
users, more desktop, lower slots); ``concept_drift`` changes what they click (affinities redrawn,
position bias halved).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlsd.features.windows import rolling_counts, smoothed_rate
from mlsd.problems.synthetic import WorldParams, calibrate_intercept, sigmoid
from mlsd.spec import ProblemSpec
from mlsd.spec.schema import Duration, parse_duration

CATEGORIES = ["auto", "beauty", "finance", "food", "gaming", "health", "fashion", "sports", "tech", "travel"]
COUNTRIES = ["US", "GB", "DE", "IN", "BR"]
DEVICES = ["ios", "android", "desktop"]
AGE_BANDS = (25, 45)  # band edges: <25, 25-44, 45+
N_POSITIONS = 10


class GeneratorParams(WorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_impressions: int = Field(default=200_000, ge=1_000)
    days: int = Field(default=14, ge=2)
    target_ctr: float = Field(default=0.02, gt=0, lt=0.5)
    attribution_window: Duration = timedelta(minutes=30)
    mean_click_delay: Duration = timedelta(seconds=45)
    scenario: Literal["none", "covariate_shift", "concept_drift"] = "none"
    # Spread (logit sd) of each latent driver. Segment x category affinity is learnable from
    # attributes; user propensity and ad quality only through noisy CTR history.
    impressions_per_user: int = Field(default=20, ge=1, description="sets the number of users")
    impressions_per_ad: int = Field(default=400, ge=1, description="sets the number of ads")
    affinity_sd: float = Field(default=0.55, ge=0)
    propensity_sd: float = Field(default=0.15, ge=0)
    quality_sd: float = Field(default=0.2, ge=0)


class FeatureParams(BaseModel):
    """conf/base/parameters_problem.yml ``features:`` block."""

    model_config = ConfigDict(extra="forbid")

    every: Duration = timedelta(days=1)
    windows: list[str] = Field(
        default=["1d", "7d"], min_length=1, description="trailing windows; each names its fields"
    )
    prior_ctr: float = Field(default=0.02, gt=0, lt=1)
    prior_weight: float = Field(default=20.0, ge=0)

    @field_validator("windows")
    @classmethod
    def _durations(cls, windows: list[str]) -> list[str]:
        bad = [w for w in windows if not isinstance(parse_duration(w), timedelta)]
        if bad:
            raise ValueError(f"{bad} are not durations like '1d' or '12h'")
        return windows


@dataclass(frozen=True)
class AdClickWorld:
    """The latent truth of one seeded world: who exists and what drives their clicks."""

    users: pd.DataFrame
    ads: pd.DataFrame
    propensity: np.ndarray  # per user
    quality: np.ndarray  # per ad
    affinity: np.ndarray  # segment x category
    position_bias: float

    @classmethod
    def create(cls, params: GeneratorParams) -> AdClickWorld:
        rng = np.random.default_rng(params.seed)
        n_users = max(50, params.n_impressions // params.impressions_per_user)
        n_ads = max(20, params.n_impressions // params.impressions_per_ad)
        start = params.end_time() - timedelta(days=params.days)
        shifted = params.scenario == "covariate_shift"
        age_mean, device_p = (52, [0.2, 0.2, 0.6]) if shifted else (34, [0.45, 0.4, 0.15])
        users = pd.DataFrame(
            {
                "user_id": np.arange(1, n_users + 1, dtype="int64"),
                "age": np.clip(rng.normal(age_mean, 11, n_users), 13, 90).astype("int64"),
                "country": rng.choice(COUNTRIES, n_users, p=[0.4, 0.15, 0.15, 0.2, 0.1]),
                "device": rng.choice(DEVICES, n_users, p=device_p),
                "signup_ts": start - pd.to_timedelta(rng.uniform(1, 365, n_users), unit="D"),
            }
        )
        ads = pd.DataFrame(
            {
                "ad_id": np.arange(1, n_ads + 1, dtype="int64"),
                "advertiser_id": rng.integers(1, max(5, n_ads // 10) + 1, n_ads).astype("int64"),
                "category": rng.choice(CATEGORIES, n_ads),
                "created_ts": start - pd.to_timedelta(rng.uniform(1, 90, n_ads), unit="D"),
            }
        )
        # Two 2-way crosses (age band x category, device x category) make the segment x category table.
        by_age = rng.normal(0, params.affinity_sd, (len(AGE_BANDS) + 1, 1, len(CATEGORIES)))
        by_device = rng.normal(0, params.affinity_sd, (1, len(DEVICES), len(CATEGORIES)))
        affinity = (by_age + by_device).reshape(-1, len(CATEGORIES))
        propensity = rng.normal(0, params.propensity_sd, n_users)
        quality = rng.normal(0, params.quality_sd, n_ads)
        if params.scenario == "concept_drift":
            affinity = (
                np.random.default_rng(params.seed + 1).permutation(affinity.ravel()).reshape(affinity.shape)
            )
        bias = 0.125 if params.scenario == "concept_drift" else 0.25
        return cls(users, ads, propensity, quality, affinity, bias)

    def segment(self, user_idx: np.ndarray) -> np.ndarray:
        age = self.users["age"].to_numpy()[user_idx]
        band = np.searchsorted(AGE_BANDS, age, side="right")
        device = pd.Categorical(self.users["device"].to_numpy()[user_idx], categories=DEVICES).codes
        return band * len(DEVICES) + device

    def logit(
        self, user_idx: np.ndarray, ad_idx: np.ndarray, position: np.ndarray, hour: np.ndarray
    ) -> np.ndarray:
        """The true log-odds of a click, without the intercept."""
        category = pd.Categorical(self.ads["category"].to_numpy()[ad_idx], categories=CATEGORIES).codes
        return (
            self.propensity[user_idx]
            + self.quality[ad_idx]
            + self.affinity[self.segment(user_idx), category]
            - self.position_bias * (position - 1)
            + 0.3 * np.sin(2 * np.pi * (hour - 14) / 24)
        )


def _activity(world: AdClickWorld, rng: np.random.Generator) -> np.ndarray:
    """How often each user shows up (heavy-tailed): a property of the world, shared by the
    training data and simulated traffic, so the same users are the heavy ones in both."""
    return rng.lognormal(0, 1, len(world.users))


def _draw(
    world: AdClickWorld, rng: np.random.Generator, n: int, shifted: bool, activity: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Who sees which ad, in which slot, at which hour: n impressions of traffic.

    ``shifted`` sends traffic to lower slots; ``activity`` (per user) says who arrives how often.
    """
    user_idx = rng.choice(len(world.users), n, p=activity / activity.sum())
    ad_idx = rng.integers(0, len(world.ads), n)
    position = np.minimum(rng.geometric(0.25 if shifted else 0.45, n), N_POSITIONS).astype("int64")
    hour_p = 1 + 0.6 * np.sin(2 * np.pi * (np.arange(24) - 8) / 24)
    hour = rng.choice(24, n, p=hour_p / hour_p.sum()).astype("int64")
    return user_idx, ad_idx, position, hour


SimulationScenario = Literal["none", "covariate_shift", "concept_drift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` online requests from the world the pipeline's data came from, and their true P(click).

    The world (users, ads, latent drivers, intercept) is the one ``generate`` built with the same
    ``params``, so requests name entities the online store knows. Scenarios:

    - ``none``: traffic as in the training data.
    - ``covariate_shift``: older and desktop users arrive more, ads sit in lower slots (the
      model inputs ``age``, ``device`` and ``position`` shift; what drives clicks does not).
    - ``concept_drift``: same traffic, but segment x category affinities are redrawn and the
      position effect halves (the inputs do not shift; their relation to clicks does).
    - ``new_entities``: every user is new to the store (their stored features are missing).
    """
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world = AdClickWorld.create(p)
    base_rng = np.random.default_rng(p.seed + 100)  # generate's stream: same activity, same intercept
    activity = _activity(world, base_rng)
    base = _draw(world, base_rng, p.n_impressions, p.scenario == "covariate_shift", activity)
    intercept = calibrate_intercept(world.logit(*base), p.target_ctr)
    rng = np.random.default_rng(seed)
    if scenario == "covariate_shift":
        older = np.exp(0.08 * (world.users["age"].to_numpy() - 34))
        activity = activity * older * np.where(world.users["device"].to_numpy() == "desktop", 4.0, 1.0)
    user_idx, ad_idx, position, hour = _draw(world, rng, n, scenario == "covariate_shift", activity)
    truth = world
    if scenario == "concept_drift":
        truth = AdClickWorld.create(p.model_copy(update={"scenario": "concept_drift"}))
    logit = truth.logit(user_idx, ad_idx, position, hour)
    user_ids = world.users["user_id"].to_numpy()[user_idx]
    if scenario == "new_entities":
        user_ids = int(world.users["user_id"].max()) + 1 + np.arange(n)
        fresh = rng.normal(0, p.propensity_sd, n)  # a new user's own propensity
        logit = logit - world.propensity[user_idx] + fresh
    elif scenario != "none" and scenario not in ("covariate_shift", "concept_drift"):
        raise ValueError(
            f"unknown scenario {scenario!r}; one of none, covariate_shift, concept_drift, new_entities"
        )
    ads = world.ads.iloc[ad_idx]
    requests = [
        {"user_id": int(u), "ad_id": int(a), "category": str(c), "position": int(pos), "hour": int(h)}
        for u, a, c, pos, h in zip(user_ids, ads["ad_id"], ads["category"], position, hour, strict=True)
    ]
    return requests, sigmoid(logit + intercept)


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables users, ads, impressions (with ``true_p``) and clicks."""
    p = GeneratorParams.model_validate(dict(params))
    world = AdClickWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    n = p.n_impressions
    user_idx, ad_idx, position, hour = _draw(
        world, rng, n, p.scenario == "covariate_shift", _activity(world, rng)
    )
    day = rng.integers(0, p.days, n)
    start = p.end_time() - timedelta(days=p.days)
    ts = start + pd.to_timedelta(day * 86400 + hour * 3600 + rng.integers(0, 3600, n), unit="s")
    logit = world.logit(user_idx, ad_idx, position, hour)
    true_p = sigmoid(logit + calibrate_intercept(logit, p.target_ctr))
    clicked = rng.random(n) < true_p
    order = np.argsort(ts.to_numpy(), kind="stable")
    impressions = (
        pd.DataFrame(
            {
                "user_id": world.users["user_id"].to_numpy()[user_idx],
                "ad_id": world.ads["ad_id"].to_numpy()[ad_idx],
                "ts": ts,
                "position": position,
                "hour": hour,
                "true_p": true_p,
            }
        )
        .iloc[order]
        .reset_index(drop=True)
    )
    impressions.insert(0, "imp_id", np.arange(1, n + 1, dtype="int64"))
    clicked = clicked[order]
    window_s = p.attribution_window.total_seconds()
    delay = np.minimum(rng.exponential(p.mean_click_delay.total_seconds(), n), window_s - 1)
    clicked_imps = impressions.loc[clicked, ["imp_id", "ts"]].reset_index(drop=True)
    clicks = pd.DataFrame(
        {
            "imp_id": clicked_imps["imp_id"],
            "click_ts": clicked_imps["ts"] + pd.to_timedelta(delay[clicked], unit="s"),
        }
    )
    return {"users": world.users, "ads": world.ads, "impressions": impressions, "clicks": clicks}


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Labelled impressions: the ad's category, ``clicked`` (0/1) and ``click_delay_s``."""
    imps = raw["impressions"].merge(raw["ads"][["ad_id", "category"]], on="ad_id", how="left")
    events = imps.merge(raw["clicks"], on="imp_id", how="left")
    events["clicked"] = events["click_ts"].notna().astype("int64")
    events["click_delay_s"] = (events["click_ts"] - events["ts"]).dt.total_seconds()
    return events[list(spec.tables[spec.events_table].columns)]


def build_feature_tables(
    spec: ProblemSpec,
    raw: Mapping[str, pd.DataFrame],
    events: pd.DataFrame,
    params: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """user_profile, and CTR snapshots per user, per ad and per (user, category)."""
    f = FeatureParams.model_validate(dict(params))
    windows = {label: parse_duration(label) for label in f.windows}
    users = raw["users"]
    tables = {
        "user_profile": users[["user_id", "age", "country", "device"]].assign(
            event_timestamp=users["signup_ts"]
        )
    }
    for source, keys, prefix in (
        ("user_ctr", ["user_id"], "user"),
        ("ad_ctr", ["ad_id"], "ad"),
        ("user_category_ctr", ["user_id", "category"], "uc"),
    ):
        counts = rolling_counts(events, keys, "ts", "click_ts", windows, f.every)
        table = counts[[*keys, "event_timestamp"]].copy()
        for label in windows:
            n, k = counts[f"n_{label}"], counts[f"k_{label}"]
            table[f"{prefix}_imps_{label}"] = n
            table[f"{prefix}_ctr_{label}"] = smoothed_rate(k, n, f.prior_ctr, f.prior_weight).astype(
                "float32"
            )
        tables[source] = table
    return tables
