"""Bad ads detection: new ads to review before they serve, with a known probability of violation.

The world: advertisers are honest or, a few, bad (a hidden state). Bad advertisers have newer
accounts and more prior violations, sometimes throwaway landing domains (``deal-4821.top``),
and write far more scam ads. A scam ad's words are policy-violating terms (``miracle``,
``casino``, ``guaranteed``...) at ``policy_rate``, any other ad's at ``stray_rate``; the rest
are words of the advertiser's topic or common words. Each ad's true log-odds of violating the
policy = intercept + ``scam_weight`` x scam + ``bad_weight`` x bad advertiser (its landing pages
violate whatever the text says) + noise; ``true_p`` is stored and the reviewers' verdict drawn
from it, so the best achievable PR-AUC (the oracle) is known.

The adversary hides: a share (``obfuscation``) of a bad advertiser's policy terms get random digit
substitutions (``c4s1n0``), spellings a vocabulary learnt from past ads does not hold. So the
text alone misses much of what bad advertisers do; their history shows it: account age, prior
violations, how many ads they submitted and how many of those the reviewers already rejected
(verdicts arrive after a delay).

Text is lowercase ASCII, tokenized as :data:`mlsd.spec.TOKEN_PATTERN`.
Scenarios for monitoring: ``covariate_shift`` (longer bodies, more bad advertisers),
``concept_drift`` (bad advertisers hide almost every policy term).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlsd.features.windows import rolling_counts, smoothed_rate
from mlsd.problems.synthetic import WorldParams, calibrate_intercept, sigmoid
from mlsd.spec import ProblemSpec
from mlsd.spec.schema import Duration

TOPICS = {
    "shoes": ["running", "shoes", "sneakers", "leather", "boots", "comfort", "sizes", "sale"],
    "travel": ["flights", "hotel", "beach", "weekend", "tour", "booking", "city", "resort"],
    "software": ["cloud", "app", "team", "project", "secure", "backup", "software", "trial"],
    "food": ["pizza", "delivery", "fresh", "organic", "recipes", "kitchen", "coffee", "snacks"],
    "finance": ["savings", "account", "budget", "insurance", "mortgage", "rates", "advice", "bank"],
    "fitness": ["gym", "yoga", "training", "coach", "protein", "workout", "classes", "health"],
}
COMMON = [
    "new", "best", "today", "free", "shipping", "online", "offer", "quality", "now", "your", "get", "shop",
]  # fmt: skip
# Policy-violating terms: a scam's words; a bad advertiser hides a share of them (_obfuscate).
POLICY = [
    "miracle", "guaranteed", "pills", "casino", "crypto", "replica", "loan", "giveaway", "winner", "secret",
]  # fmt: skip
_TOPIC_WORDS = np.array(list(TOPICS.values()), dtype=object)
_COMMON, _POLICY = np.array(COMMON, dtype=object), np.array(POLICY, dtype=object)
SAFE_TLDS = ["com", "com", "com", "org", "net", "io"]
THROWAWAY_TLDS = ["top", "xyz", "biz", "click", "com"]


class GeneratorParams(WorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_ads: int = Field(default=60_000, ge=2_000)
    days: int = Field(default=14, ge=5)
    ads_per_advertiser: int = Field(default=12, ge=2, description="sets the number of advertisers")
    bad_advertiser_share: float = Field(default=0.06, gt=0, lt=0.5)
    target_bad_rate: float = Field(default=0.03, gt=0, lt=0.3, description="share of ads that violate")
    scam_share: float = Field(
        default=0.02, gt=0, lt=1, description="share of honest advertisers' ads that are scams"
    )
    bad_scam_share: float = Field(default=0.5, gt=0, lt=1, description="...and of bad advertisers' ads")
    scam_weight: float = Field(default=3.0, ge=0, description="log-odds of a violation added by a scam")
    bad_weight: float = Field(default=2.5, ge=0, description="...and by a bad advertiser (its landing pages)")
    noise_sd: float = Field(default=0.3, ge=0, description="spread of the rest of an ad's log-odds")
    policy_rate: float = Field(
        default=0.2, gt=0, lt=1, description="share of a scam's words that are policy terms"
    )
    stray_rate: float = Field(default=0.01, ge=0, lt=1, description="...and of any other ad's words")
    obfuscation: float = Field(
        default=0.6, ge=0, le=1, description="share of bad advertisers' policy terms hidden"
    )
    review_delay_max: Duration = timedelta(days=2)
    scenario: Literal["none", "covariate_shift", "concept_drift"] = "none"


class FeatureParams(BaseModel):
    """conf/base/parameters_problem.yml ``features:`` block."""

    model_config = ConfigDict(extra="forbid")

    every: Duration = timedelta(days=1)
    window_days: int = Field(default=14, ge=1, description="trailing window of the activity features")
    prior_reject_rate: float = Field(default=0.03, gt=0, lt=1)
    prior_weight: float = Field(default=10.0, ge=0)


@dataclass(frozen=True)
class AdWorld:
    """The latent truth of one seeded world: advertisers, which are bad, and their topic."""

    advertisers: pd.DataFrame
    bad: np.ndarray  # per advertiser, the hidden state
    topic: np.ndarray  # per advertiser, index into TOPICS

    @classmethod
    def create(cls, p: GeneratorParams, bad_share: float | None = None) -> AdWorld:
        rng = np.random.default_rng(p.seed)
        n = max(50, p.n_ads // p.ads_per_advertiser)
        bad = rng.random(n) < (p.bad_advertiser_share if bad_share is None else bad_share)
        start = p.end_time() - timedelta(days=p.days)
        age_days = np.where(bad, rng.exponential(20, n), rng.lognormal(6.0, 0.8, n))
        advertisers = pd.DataFrame(
            {
                "advertiser_id": np.arange(1, n + 1, dtype="int64"),
                "signup_ts": start - pd.to_timedelta(np.round(age_days * 86400), unit="s"),
                "prior_violations": rng.poisson(np.where(bad, 1.2, 0.08)).astype("int64"),
            }
        )
        return cls(advertisers, bad, rng.integers(0, len(TOPICS), n))


@dataclass(frozen=True)
class Ads:
    """n submitted ads: who, when (seconds from the start), the text, and the hidden truth."""

    advertiser_idx: np.ndarray
    offset_s: np.ndarray
    headline: list[str]
    body: list[str]
    landing_domain: list[str]
    logit: np.ndarray  # the true log-odds of a violation, without the intercept


def _obfuscate(word: str, rng: np.random.Generator) -> str:
    """The adversary's spelling of a policy term: each letter swapped for a random digit with
    probability 1/2, so nearly every hidden spelling is new (``c4s1n0``, ``ca8in3``) and falls
    under the vocabulary's min_df: the text model never sees it."""
    return "".join(str(rng.integers(10)) if rng.random() < 0.5 else c for c in word)


def _texts(
    rng: np.random.Generator, lengths: np.ndarray, topic: np.ndarray, policy_p: np.ndarray,
    hide_p: np.ndarray,
) -> list[str]:  # fmt: skip
    """One text per ad of ``lengths[i]`` words: each a policy term with probability ``policy_p[i]``
    (hidden with probability ``hide_p[i]``), else a word of the ad's topic (60%) or a common word."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    total = len(owner)
    topical = _TOPIC_WORDS[topic[owner], rng.integers(0, _TOPIC_WORDS.shape[1], total)]
    plain = np.where(rng.random(total) < 0.6, topical, _COMMON[rng.integers(0, len(_COMMON), total)])
    policy = rng.random(total) < policy_p[owner]
    words = np.where(policy, _POLICY[rng.integers(0, len(_POLICY), total)], plain).astype(object)
    for j in np.flatnonzero(policy & (rng.random(total) < hide_p[owner])):
        words[j] = _obfuscate(words[j], rng)
    ends = np.cumsum(lengths)
    return [" ".join(words[end - k : end]) for end, k in zip(ends, lengths, strict=True)]


def _domain(rng: np.random.Generator, bad: bool, topic: list[str]) -> str:
    """A landing domain: for a bad advertiser sometimes (30%) a throwaway one, else one of its topic."""
    if bad and rng.random() < 0.3:
        word = str(rng.choice(POLICY if rng.random() < 0.5 else COMMON))
        return f"{word}-{rng.integers(100, 10_000)}.{rng.choice(THROWAWAY_TLDS)}"
    return f"{rng.choice(topic)}-{rng.choice(COMMON)}.{rng.choice(SAFE_TLDS)}"


def _draw(world: AdWorld, p: GeneratorParams, rng: np.random.Generator, n: int, scenario: str) -> Ads:
    """n ads in time order: which are scams (their words show it unless hidden) and their true
    log-odds (scam, the advertiser's hidden state and noise)."""
    advertiser = np.sort(rng.integers(0, len(world.advertisers), n))
    bad = world.bad[advertiser]
    scam = rng.random(n) < np.where(bad, p.bad_scam_share, p.scam_share)
    logit = p.scam_weight * scam + p.bad_weight * bad + rng.normal(0, p.noise_sd, n)
    policy_p = np.where(scam, p.policy_rate, p.stray_rate)
    hide_p = np.where(bad, 0.95 if scenario == "concept_drift" else p.obfuscation, 0.0)
    body_words = rng.integers(10, 40 if scenario == "covariate_shift" else 25, n)
    topic = world.topic[advertiser]
    headline = _texts(rng, rng.integers(3, 7, n), topic, policy_p, hide_p)
    body = _texts(rng, body_words, topic, policy_p, hide_p)
    topics = list(TOPICS.values())
    domain = [_domain(rng, bool(b), topics[t]) for b, t in zip(bad, topic, strict=True)]
    offset = rng.integers(0, p.days * 86400, n)
    order = np.argsort(offset, kind="stable")
    return Ads(
        advertiser_idx=advertiser[order],
        offset_s=offset[order],
        headline=[headline[i] for i in order],
        body=[body[i] for i in order],
        landing_domain=[domain[i] for i in order],
        logit=logit[order],
    )


def _world_and_intercept(p: GeneratorParams) -> tuple[AdWorld, Ads, float, np.random.Generator]:
    """The world, the training data's ads and the intercept, from ``generate``'s stream."""
    world = AdWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    ads = _draw(world, p, rng, p.n_ads, p.scenario)
    return world, ads, calibrate_intercept(ads.logit, p.target_bad_rate), rng


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables advertisers, ads (with ``true_p``) and reviews (every ad's verdict, delayed)."""
    p = GeneratorParams.model_validate(dict(params))
    world, ads, intercept, rng = _world_and_intercept(p)
    true_p = sigmoid(intercept + ads.logit)
    ts = p.end_time() - timedelta(days=p.days) + pd.to_timedelta(ads.offset_s, unit="s")
    table = pd.DataFrame(
        {
            "ad_id": np.arange(1, len(true_p) + 1, dtype="int64"),
            "advertiser_id": world.advertisers["advertiser_id"].to_numpy()[ads.advertiser_idx],
            "ts": ts,
            "headline": ads.headline,
            "body": ads.body,
            "landing_domain": ads.landing_domain,
            "true_p": true_p,
        }
    )
    delay_s = rng.uniform(600, p.review_delay_max.total_seconds(), len(table))
    reviews = pd.DataFrame(
        {
            "ad_id": table["ad_id"],
            "review_ts": ts + pd.to_timedelta(np.round(delay_s), unit="s"),
            "verdict": np.where(rng.random(len(table)) < true_p, "reject", "approve"),
        }
    )
    return {"advertisers": world.advertisers, "ads": table, "reviews": reviews}


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Reviewed ads: ``is_bad`` (the verdict was reject) and when the verdict came."""
    events = raw["ads"].merge(raw["reviews"], on="ad_id", how="left")
    events["is_bad"] = (events["verdict"] == "reject").astype("int64")
    events["review_delay_h"] = (events["review_ts"] - events["ts"]).dt.total_seconds() / 3600
    return events[list(spec.tables[spec.events_table].columns)]


def _account_age(advertisers: pd.DataFrame, events: pd.DataFrame, every: timedelta) -> pd.DataFrame:
    """Each advertiser's account age in whole days at every snapshot of the data's span."""
    step = pd.Timedelta(every)
    snapshots = pd.date_range(events["ts"].min().floor(step), events["ts"].max().ceil(step), freq=step)
    grid = advertisers[["advertiser_id", "signup_ts"]].merge(
        pd.DataFrame({"event_timestamp": snapshots}), how="cross"
    )
    grid = grid[grid["event_timestamp"] >= grid["signup_ts"]]
    age = (grid["event_timestamp"] - grid["signup_ts"]) // pd.Timedelta(days=1)
    return grid[["advertiser_id", "event_timestamp"]].assign(account_age_days=age.astype("int64"))


def build_feature_tables(
    spec: ProblemSpec, raw: Mapping[str, pd.DataFrame], events: pd.DataFrame, params: Mapping[str, Any]
) -> dict[str, pd.DataFrame]:
    """advertiser_profile (at signup), advertiser_age and advertiser_activity (daily snapshots).

    Activity counts the advertiser's ads submitted in the trailing window and the rejections the
    reviewers had returned by the snapshot (a rejection counts at its review time, not the ad's).
    """
    f = FeatureParams.model_validate(dict(params))
    advertisers = raw["advertisers"]
    rejected = events.assign(reject_ts=events["review_ts"].where(events["is_bad"] == 1))
    window = {"w": timedelta(days=f.window_days)}
    activity = rolling_counts(rejected, ["advertiser_id"], "ts", "reject_ts", window, f.every)
    return {
        "advertiser_profile": advertisers[["advertiser_id", "prior_violations"]].assign(
            event_timestamp=advertisers["signup_ts"]
        ),
        "advertiser_age": _account_age(advertisers, events, f.every),
        "advertiser_activity": activity[["advertiser_id", "event_timestamp"]].assign(
            advertiser_ads_14d=activity["n_w"],
            advertiser_reject_rate_14d=smoothed_rate(
                activity["k_w"], activity["n_w"], f.prior_reject_rate, f.prior_weight
            ).astype("float32"),
        ),
    }


SimulationScenario = Literal["none", "covariate_shift", "concept_drift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` review requests (an advertiser and its new ad's text) from the pipeline's world, and
    each ad's true P(violation). ``new_entities``: every advertiser is new to the store."""
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world, _, intercept, _ = _world_and_intercept(p)
    if scenario == "covariate_shift":
        world = AdWorld.create(p, bad_share=min(0.45, 3 * p.bad_advertiser_share))
    ads = _draw(world, p, np.random.default_rng(seed), n, scenario)
    ids = world.advertisers["advertiser_id"].to_numpy()[ads.advertiser_idx]
    if scenario == "new_entities":
        ids = len(world.advertisers) + 1 + np.arange(n)
    requests = [
        {"advertiser_id": int(a), "headline": h, "body": b, "landing_domain": d}
        for a, h, b, d in zip(ids, ads.headline, ads.body, ads.landing_domain, strict=True)
    ]
    return requests, sigmoid(intercept + ads.logit)
