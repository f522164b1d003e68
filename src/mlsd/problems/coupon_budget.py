"""Coupon allocation under a budget: a randomized coupon experiment with a known per-user effect.

The world: users on a plan (free, basic, premium) with a typical basket value and a latent
engagement. Every day each user's activity is snapshotted (sessions in the last 7 days, days since
the last purchase, tenure). Every day a campaign picks ``users_per_day`` users at random and sends
a coupon to a random ``treat_share`` of them (the control group gets nothing): a randomized
experiment, so treated and control rows are comparable. The coupon's cost is a share of the
user's basket. Whether the user converts within the campaign depends on the snapshot:

    logit0 = intercept + 0.5 (log1p(sessions_7d) - 2) - 0.025 min(days_since_purchase, 60)
             + plan effect + 0.2 log(basket / 50) + user noise
    effect = strength * (1.2 bump(log1p(sessions_7d) around 1.6)       # persuadable: lukewarm users
                         + 0.9 [14 <= days_since_purchase <= 45]        # lapsing customers
                         - 1.0 [premium and tenure > 365 days]) - 0.2   # sleeping dogs
    p0 = sigmoid(logit0), p1 = sigmoid(logit0 + effect), tau = p1 - p0

``true_tau`` is stored beside every assignment and is never a feature: the oracle allocation
ranks by it. Heavy users convert anyway (sure things), loyal premium users are put off by a
discount (sleeping dogs), and the coupon pays where engagement is lukewarm or a customer is
lapsing: an effect a conversion model cannot see and a linear T-learner only half sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import Field

from mlsd.problems.synthetic import WorldParams, calibrate_intercept, sigmoid
from mlsd.spec import ProblemSpec

PLANS = ["free", "basic", "premium"]
PLAN_EFFECT = np.array([-0.4, 0.0, 0.4])


class GeneratorParams(WorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_users: int = Field(default=20_000, ge=100)
    days: int = Field(default=14, ge=5)
    users_per_day: int = Field(default=5_000, ge=10, description="campaign audience per day")
    treat_share: float = Field(default=0.5, gt=0, lt=1, description="randomized share that gets a coupon")
    base_conversion: float = Field(default=0.08, gt=0, lt=0.5, description="mean P(convert) without coupon")
    effect_strength: float = Field(default=1.0, ge=0, description="scales the coupon's effect on the logit")
    coupon_rate: float = Field(default=0.15, gt=0, le=1, description="coupon value as a share of the basket")
    user_noise_sd: float = Field(default=0.3, ge=0, description="unobserved per-user conversion propensity")


@dataclass(frozen=True)
class CouponWorld:
    """The latent truth of one seeded world and its daily activity snapshots ``[users, days]``."""

    users: pd.DataFrame
    start: pd.Timestamp
    sessions: np.ndarray
    days_since: np.ndarray
    noise: np.ndarray
    intercept: float

    @classmethod
    def create(cls, p: GeneratorParams) -> CouponWorld:
        rng = np.random.default_rng(p.seed)
        n = p.n_users
        start = p.end_time() - timedelta(days=p.days)
        engagement = rng.lognormal(-0.2, 0.8, n)  # ~5 sessions a week for the median user
        users = pd.DataFrame(
            {
                "user_id": np.arange(1, n + 1, dtype="int64"),
                "plan": rng.choice(PLANS, n, p=[0.5, 0.3, 0.2]),
                # Whole currency units: tree thresholds between integers are exact in float32
                # (ONNX), between cents they are not and a few rows would flip a split.
                "basket": np.round(np.clip(rng.lognormal(np.log(50), 0.5, n), 5, 500)).astype("int64"),
                "signup_ts": start - pd.to_timedelta(rng.uniform(1, 1500, n), unit="D"),
            }
        )
        sessions = rng.poisson(7 * engagement[:, None], (n, p.days)).astype("int64")
        buy_p = np.clip(0.01 + 0.04 * engagement, 0.005, 0.3)
        days_since = np.empty((n, p.days), dtype="int64")
        days_since[:, 0] = np.minimum(rng.geometric(buy_p) - 1, 365)
        for day in range(1, p.days):
            bought = rng.random(n) < buy_p
            days_since[:, day] = np.where(bought, 0, np.minimum(days_since[:, day - 1] + 1, 365))
        noise = rng.normal(0, p.user_noise_sd, n)
        world = cls(users, start, sessions, days_since, noise, 0.0)
        grid = np.repeat(np.arange(n), p.days), np.tile(np.arange(p.days), n)
        intercept = calibrate_intercept(world.logit0(*grid), p.base_conversion)
        return cls(users, start, sessions, days_since, noise, intercept)

    def snapshot_ts(self, day: np.ndarray) -> pd.DatetimeIndex:
        """When day ``day``'s activity snapshot is taken (the start of that day, UTC)."""
        return self.start + pd.to_timedelta(np.asarray(day), unit="D")

    def tenure_days(self, user_idx: np.ndarray, day: np.ndarray) -> np.ndarray:
        signup = self.users["signup_ts"].to_numpy()[user_idx]
        return np.asarray(
            (self.snapshot_ts(day).to_numpy() - signup) // np.timedelta64(1, "D"), dtype="int64"
        )

    def logit0(self, user_idx: np.ndarray, day: np.ndarray) -> np.ndarray:
        """Log-odds of converting without a coupon, on the day's snapshot (intercept included)."""
        plan = pd.Categorical(self.users["plan"].to_numpy()[user_idx], categories=PLANS).codes
        basket = self.users["basket"].to_numpy()[user_idx]
        return (
            self.intercept
            + 0.5 * (np.log1p(self.sessions[user_idx, day]) - 2)
            - 0.025 * np.minimum(self.days_since[user_idx, day], 60)
            + PLAN_EFFECT[plan]
            + 0.2 * np.log(basket / 50)
            + self.noise[user_idx]
        )

    def effect(self, user_idx: np.ndarray, day: np.ndarray, strength: float) -> np.ndarray:
        """The coupon's effect on the log-odds of converting."""
        lukewarm = np.exp(-((np.log1p(self.sessions[user_idx, day]) - 1.6) ** 2) / 0.4)
        since = self.days_since[user_idx, day]
        lapsing = (since >= 14) & (since <= 45)
        loyal = (self.users["plan"].to_numpy()[user_idx] == "premium") & (
            self.tenure_days(user_idx, day) > 365
        )
        return strength * (1.2 * lukewarm + 0.9 * lapsing - 1.0 * loyal) - 0.2

    def probabilities(
        self, user_idx: np.ndarray, day: np.ndarray, strength: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """P(convert) without and with a coupon."""
        logit = self.logit0(user_idx, day)
        return sigmoid(logit), sigmoid(logit + self.effect(user_idx, day, strength))


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables users, activity (daily snapshots), assignments (with ``true_tau``) and
    conversions."""
    p = GeneratorParams.model_validate(dict(params))
    world = CouponWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    audience = min(p.users_per_day, p.n_users)
    user_idx = np.concatenate([rng.choice(p.n_users, audience, replace=False) for _ in range(p.days)])
    day = np.repeat(np.arange(p.days), audience)
    ts = world.snapshot_ts(day) + pd.to_timedelta(rng.integers(8 * 3600, 20 * 3600, len(day)), unit="s")
    treated = (rng.random(len(day)) < p.treat_share).astype("int64")
    p0, p1 = world.probabilities(user_idx, day, p.effect_strength)
    converted = rng.random(len(day)) < np.where(treated == 1, p1, p0)
    basket = world.users["basket"].to_numpy()[user_idx]
    assignments = pd.DataFrame(
        {
            "assignment_id": np.arange(1, len(day) + 1, dtype="int64"),
            "user_id": world.users["user_id"].to_numpy()[user_idx],
            "ts": ts,
            "treated": treated,
            "coupon_cost": np.round(np.clip(p.coupon_rate * basket, 1, 100), 2),
            "true_tau": p1 - p0,
        }
    )
    delay = pd.to_timedelta(rng.exponential(86400, int(converted.sum())), unit="s")
    conversions = pd.DataFrame(
        {"assignment_id": assignments["assignment_id"][converted], "converted_ts": ts[converted] + delay}
    )
    n, days = p.n_users, p.days
    activity = pd.DataFrame(
        {
            "user_id": np.repeat(world.users["user_id"].to_numpy(), days),
            "snapshot_ts": np.tile(world.snapshot_ts(np.arange(days)).to_numpy(), n),
            "sessions_7d": world.sessions.ravel(),
            "days_since_purchase": world.days_since.ravel(),
        }
    )
    return {
        "users": world.users,
        "activity": activity,
        "assignments": assignments,
        "conversions": conversions,
    }


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Assignments labelled ``converted`` (0/1) from the conversions table."""
    events = raw["assignments"].merge(raw["conversions"], on="assignment_id", how="left")
    events["converted"] = events["converted_ts"].notna().astype("int64")
    return events[list(spec.tables[spec.events_table].columns)]


def build_feature_tables(
    spec: ProblemSpec,
    raw: Mapping[str, pd.DataFrame],
    events: pd.DataFrame,
    params: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """user_profile (plan, basket; from signup) and user_activity (the daily snapshots, with the
    tenure on the snapshot day)."""
    users = raw["users"]
    activity = raw["activity"].merge(users[["user_id", "signup_ts"]], on="user_id", how="left")
    tenure = (activity["snapshot_ts"] - activity["signup_ts"]) // pd.Timedelta(days=1)
    return {
        "user_profile": users[["user_id", "plan", "basket"]].assign(event_timestamp=users["signup_ts"]),
        "user_activity": pd.DataFrame(
            {
                "user_id": activity["user_id"],
                "event_timestamp": activity["snapshot_ts"],
                "sessions_7d": activity["sessions_7d"],
                "days_since_purchase": activity["days_since_purchase"],
                "tenure_days": tenure.astype("int64"),
            }
        ),
    }


SimulationScenario = Literal["none", "covariate_shift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` scoring requests (a user id each) from the world the pipeline's data came from, and
    each user's chance to convert *without* a coupon on the latest snapshot: the online endpoint
    only scores, it sends nothing, so the outcome the feedback records is the control one.

    Scenarios: ``none``; ``covariate_shift`` (the most engaged fifth of users sends most
    requests, so the logged activity shifts); ``new_entities`` (ids the store never saw: their
    features take the spec defaults).
    """
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world = CouponWorld.create(p)
    rng = np.random.default_rng(seed)
    last = p.days - 1
    weight = np.ones(p.n_users)
    if scenario == "covariate_shift":
        sessions = world.sessions[:, last]
        weight = np.where(sessions >= np.quantile(sessions, 0.8), 20.0, 1.0)
    user_idx = rng.choice(p.n_users, n, p=weight / weight.sum())
    p0, _ = world.probabilities(user_idx, np.full(n, last), p.effect_strength)
    user_ids = world.users["user_id"].to_numpy()[user_idx]
    if scenario == "new_entities":
        user_ids = int(world.users["user_id"].max()) + 1 + np.arange(n)
    return [{"user_id": int(u)} for u in user_ids], p0
