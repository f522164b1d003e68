"""Personalized feed ranking: a synthetic social feed with a known P(engage), and its features.

The world: users (with a device) follow a few authors, mostly ones that suit their taste;
authors write posts (text, photo, video, link) all the time. A feed session shows a user a run of
recent posts, most from followed authors and the rest from popular ones ("explore"). Whether a user
engages with an impression follows

    true_p = sigmoid(intercept + taste_u . taste_a + follow_boost * followed
                     + type_pref[device, post_type] + user_bias + author_bias + post_quality
                     - recency_decay * shelf_life[post_type] * log(1 + post_age_h / 12)
                     - position_bias * (position - 1))

stored with every impression (``true_p``), so the best achievable AUC and NDCG@k per session (the
oracle) are known. Latent tastes are visible only through the (user, author) engagement history,
quality only through engagement counts: what the feature store's windows estimate.

Scenarios shift the world for monitoring work: ``covariate_shift`` changes who arrives and what
they are shown (desktop users, fewer followed authors, older posts); ``concept_drift`` changes
what they engage with (type preferences redrawn, follow boost and recency decay halved).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import brentq
from scipy.special import expit

from mlsd.problems.synthetic import WindowParams, WorldParams, rate_snapshots
from mlsd.spec import ProblemSpec
from mlsd.spec.schema import Duration

POST_TYPES = ["text", "photo", "video", "link"]
# How fast each post type goes stale, relative to recency_decay: news links and text age fast,
# videos keep their appeal (an age x type interaction a linear model cannot express).
SHELF_LIFE = np.array([2.0, 1.0, 0.2, 3.0])
DEVICES = ["ios", "android", "desktop"]
LOOKBACK_DAYS = 3  # posts exist before the first session: a feed shows recent posts, not only new ones
SECONDS_PER_IMPRESSION = 8.0  # mean scroll time between two impressions of a session
CALIBRATION_ROWS = 50_000  # impressions drawn to set the intercept to the target engagement rate
# Covariate shift's candidates: fewer from followed authors, and older posts.
SHIFTED_CANDIDATES: dict[str, Any] = {"followed_share": 0.3, "freshness": 0.2}


class GeneratorParams(WorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_impressions: int = Field(default=200_000, ge=1_000)
    days: int = Field(default=14, ge=3)
    target_engagement: float = Field(default=0.08, gt=0, lt=0.5)
    attribution_window: Duration = timedelta(minutes=30)
    mean_engage_delay: Duration = timedelta(seconds=60)
    scenario: Literal["none", "covariate_shift", "concept_drift"] = "none"
    session_length: float = Field(default=12.0, ge=2, description="mean impressions per session")
    impressions_per_user: int = Field(default=40, ge=1, description="sets the number of users")
    impressions_per_author: int = Field(default=400, ge=1, description="sets the number of authors")
    posts_per_author_day: float = Field(default=1.0, gt=0)
    follows_per_user: int = Field(default=20, ge=1, description="at most a tenth of the authors")
    followed_share: float = Field(default=0.6, ge=0, le=1, description="impressions from followed authors")
    latent_dim: int = Field(default=8, ge=1)
    # Logit-scale size of each driver of engagement.
    taste_sd: float = Field(default=0.5, ge=0)
    follow_boost: float = 0.6
    type_pref_sd: float = Field(default=1.2, ge=0)
    user_sd: float = Field(default=0.4, ge=0)
    author_sd: float = Field(default=0.3, ge=0)
    post_sd: float = Field(default=0.3, ge=0)
    recency_decay: float = Field(default=1.0, ge=0)
    position_bias: float = Field(default=0.03, ge=0)

    def start_time(self) -> pd.Timestamp:
        return self.end_time() - timedelta(days=self.days)


class FeatureParams(BaseModel):
    """conf/base/parameters_problem.yml ``features:`` block."""

    model_config = ConfigDict(extra="forbid")

    user: WindowParams = WindowParams(every=timedelta(days=1), windows=["1d", "7d"])
    author: WindowParams = WindowParams(every=timedelta(days=1), windows=["1d", "7d"])
    user_author: WindowParams = WindowParams(every=timedelta(days=1), windows=["7d", "28d"])
    post: WindowParams = WindowParams(every=timedelta(hours=1), windows=["1h", "24h"])
    prior_rate: float = Field(default=0.08, gt=0, lt=1)
    prior_weight: float = Field(default=20.0, ge=0)


# Feature table -> (join keys, field prefix, which FeatureParams windows it uses).
RATE_TABLES = {
    "user_activity": (["user_id"], "user", "user"),
    "author_popularity": (["author_id"], "author", "author"),
    "user_author_affinity": (["user_id", "author_id"], "ua", "user_author"),
    "post_engagement": (["post_id"], "post", "post"),
}


@dataclass(frozen=True)
class Traffic:
    """Who was shown what: one entry per impression (indices into the world's tables)."""

    session: np.ndarray
    user_idx: np.ndarray
    post_idx: np.ndarray
    ts: pd.DatetimeIndex
    position: np.ndarray
    followed: np.ndarray
    age_h: np.ndarray


@dataclass(frozen=True)
class FeedWorld:
    """The latent truth of one seeded world: users, authors, posts, follows and what drives engagement."""

    users: pd.DataFrame
    authors: pd.DataFrame
    posts: pd.DataFrame  # sorted by (author, created_ts): each author's posts are one block
    follows: np.ndarray  # (users, follows_per_user) author indices
    activity: np.ndarray  # per user: how often they open the feed
    popularity: np.ndarray  # per author: how often explore shows them
    taste_u: np.ndarray
    taste_a: np.ndarray
    user_bias: np.ndarray
    author_bias: np.ndarray
    post_quality: np.ndarray
    type_pref: np.ndarray  # device x post type
    params: GeneratorParams
    intercept: float = 0.0

    @classmethod
    def create(cls, p: GeneratorParams) -> FeedWorld:
        rng = np.random.default_rng(p.seed)
        n_users = max(50, p.n_impressions // p.impressions_per_user)
        n_authors = max(20, p.n_impressions // p.impressions_per_author)
        n_follows = min(p.follows_per_user, max(1, n_authors // 10))  # small worlds: follow fewer
        start = p.start_time()
        device_p = [0.2, 0.2, 0.6] if p.scenario == "covariate_shift" else [0.45, 0.4, 0.15]
        users = pd.DataFrame(
            {
                "user_id": np.arange(1, n_users + 1, dtype="int64"),
                "device": rng.choice(DEVICES, n_users, p=device_p),
                "signup_ts": start - pd.to_timedelta(rng.uniform(1, 365, n_users), unit="D"),
            }
        )
        authors = pd.DataFrame(
            {
                "author_id": np.arange(1, n_authors + 1, dtype="int64"),
                "created_ts": start - pd.to_timedelta(rng.uniform(30, 720, n_authors), unit="D"),
            }
        )
        taste_u = rng.normal(0, 1 / np.sqrt(p.latent_dim), (n_users, p.latent_dim))
        taste_a = rng.normal(0, p.taste_sd, (n_authors, p.latent_dim))
        popularity = rng.lognormal(0, 1, n_authors)
        world = cls(
            users=users,
            authors=authors,
            posts=_posts(p, rng, n_authors, popularity),
            follows=_follows(rng, taste_u @ taste_a.T, popularity, n_follows),
            activity=rng.lognormal(0, 0.8, n_users),
            popularity=popularity,
            taste_u=taste_u,
            taste_a=taste_a,
            user_bias=rng.normal(0, p.user_sd, n_users),
            author_bias=rng.normal(0, p.author_sd, n_authors),
            post_quality=np.zeros(0),
            type_pref=rng.normal(0, p.type_pref_sd, (len(DEVICES), len(POST_TYPES))),
            params=p,
        )
        world = dataclasses.replace(world, post_quality=rng.normal(0, p.post_sd, len(world.posts)))
        if p.scenario == "concept_drift":
            world = world.drifted()
        traffic = world.draw(np.random.default_rng(p.seed + 1), min(p.n_impressions, CALIBRATION_ROWS))
        logit = world.logit(traffic)
        intercept = brentq(lambda b: expit(logit + b).mean() - p.target_engagement, -30.0, 30.0)
        return dataclasses.replace(world, intercept=float(intercept))

    def drifted(self) -> FeedWorld:
        """Concept drift: type preferences redrawn, follows and recency matter half as much."""
        rng = np.random.default_rng(self.params.seed + 2)
        p = self.params.model_copy(
            update={
                "follow_boost": self.params.follow_boost / 2,
                "recency_decay": self.params.recency_decay / 2,
            }
        )
        type_pref = rng.normal(0, p.type_pref_sd, self.type_pref.shape)
        return dataclasses.replace(self, type_pref=type_pref, params=p)

    def draw(
        self,
        rng: np.random.Generator,
        n: int,
        span: tuple[pd.Timestamp, pd.Timestamp] | None = None,
        *,
        activity: np.ndarray | None = None,
        followed_share: float | None = None,
        freshness: float = 0.5,
    ) -> Traffic:
        """``n`` impressions in sessions starting within ``span`` (default: the data's days).

        ``activity`` weighs who opens the feed; ``followed_share`` is the share of candidates from
        followed authors; ``freshness`` (0, 1] is how strongly a candidate is an author's latest post.
        """
        p = self.params
        start, end = span or (p.start_time(), p.end_time())
        lengths = 1 + rng.poisson(p.session_length - 1, int(n / p.session_length * 1.5) + 10)
        lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n)) + 1]
        lengths[-1] -= int(lengths.sum()) - n
        session = np.repeat(np.arange(len(lengths)), lengths)
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = (np.arange(n) - first + 1).astype("int64")
        weights = self.activity if activity is None else activity
        user_idx = rng.choice(len(self.users), len(lengths), p=weights / weights.sum())[session]
        opened = rng.uniform(0, (end - start).total_seconds() - 3600, len(lengths))[session]
        scroll = np.cumsum(rng.exponential(SECONDS_PER_IMPRESSION, n))
        ts = start + pd.to_timedelta(opened + scroll - scroll[first], unit="s")
        share = p.followed_share if followed_share is None else followed_share
        from_follows = rng.random(n) < share
        explore = rng.choice(len(self.authors), n, p=self.popularity / self.popularity.sum())
        followed_pick = self.follows[user_idx, rng.integers(0, self.follows.shape[1], n)]
        author_idx = np.where(from_follows, followed_pick, explore)
        post_idx = self._recent_post(author_idx, ts, rng.geometric(freshness, n) - 1)
        followed = (self.follows[user_idx] == author_idx[:, None]).any(axis=1).astype("int64")
        age_h = (ts - pd.DatetimeIndex(self.posts["created_ts"].to_numpy()[post_idx])).total_seconds() / 3600
        return Traffic(session, user_idx, post_idx, ts, position, followed, np.asarray(age_h))

    def _recent_post(self, author_idx: np.ndarray, ts: pd.DatetimeIndex, back: np.ndarray) -> np.ndarray:
        """The post ``back`` places before the author's latest one created before ``ts``."""
        origin = self.posts["created_ts"].min()
        created = (self.posts["created_ts"] - origin).dt.total_seconds().to_numpy()
        author = self.posts["author_idx"].to_numpy()
        span = created.max() + 86400.0 * 365
        keys = author * span + created
        latest = np.searchsorted(keys, author_idx * span + (ts - origin).total_seconds(), side="left") - 1
        block_start = np.searchsorted(author, author_idx, side="left")
        return np.maximum(latest - back, block_start)

    def logit(self, t: Traffic) -> np.ndarray:
        """The true log-odds of engagement of each impression, intercept included."""
        p = self.params
        author_idx = self.posts["author_idx"].to_numpy()[t.post_idx]
        device = pd.Categorical(self.users["device"].to_numpy()[t.user_idx], categories=DEVICES).codes
        ptype = pd.Categorical(self.posts["post_type"].to_numpy()[t.post_idx], categories=POST_TYPES).codes
        return (
            self.intercept
            + np.einsum("ij,ij->i", self.taste_u[t.user_idx], self.taste_a[author_idx])
            + p.follow_boost * t.followed
            + self.type_pref[device, ptype]
            + self.user_bias[t.user_idx]
            + self.author_bias[author_idx]
            + self.post_quality[t.post_idx]
            - p.recency_decay * SHELF_LIFE[ptype] * np.log1p(t.age_h / 12)
            - p.position_bias * (t.position - 1)
        )


def _posts(
    p: GeneratorParams, rng: np.random.Generator, n_authors: int, popularity: np.ndarray
) -> pd.DataFrame:
    """Posts over the data's days and LOOKBACK_DAYS before, by productive (and popular) authors,
    plus one older post per author so every author has something to show from the first day."""
    start, end = p.start_time() - timedelta(days=LOOKBACK_DAYS), p.end_time()
    n = int(n_authors * (p.days + LOOKBACK_DAYS) * p.posts_per_author_day)
    productivity = popularity**0.5 * rng.lognormal(0, 0.5, n_authors)
    author_idx = np.r_[np.arange(n_authors), rng.choice(n_authors, n, p=productivity / productivity.sum())]
    seconds = np.r_[-rng.uniform(0, 4 * 86400, n_authors), rng.uniform(0, (end - start).total_seconds(), n)]
    posts = pd.DataFrame(
        {
            "author_idx": author_idx,
            "author_id": author_idx.astype("int64") + 1,
            "created_ts": start + pd.to_timedelta(seconds, unit="s"),
            "post_type": rng.choice(POST_TYPES, len(author_idx), p=[0.35, 0.35, 0.2, 0.1]),
        }
    ).sort_values(["author_idx", "created_ts"], kind="stable", ignore_index=True)
    posts.insert(0, "post_id", np.arange(1, len(posts) + 1, dtype="int64"))
    return posts


def _follows(rng: np.random.Generator, affinity: np.ndarray, popularity: np.ndarray, k: int) -> np.ndarray:
    """``k`` authors per user, drawn without replacement with weight popularity x exp(taste match)
    (the Gumbel top-k trick): users mostly follow authors they like, and popular ones."""
    scores = affinity + np.log(popularity) + rng.gumbel(size=affinity.shape)
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables users, authors, posts, follows, impressions (with ``true_p``) and engagements."""
    p = GeneratorParams.model_validate(dict(params))
    world = FeedWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    shifted = p.scenario == "covariate_shift"
    traffic = world.draw(
        rng, p.n_impressions, followed_share=0.3 if shifted else None, freshness=0.2 if shifted else 0.5
    )
    true_p = expit(world.logit(traffic))
    engaged = rng.random(p.n_impressions) < true_p
    window_s = p.attribution_window.total_seconds()
    delay = np.minimum(rng.exponential(p.mean_engage_delay.total_seconds(), p.n_impressions), window_s - 1)
    impressions = pd.DataFrame(
        {
            "session_id": traffic.session.astype("int64") + 1,
            "user_id": world.users["user_id"].to_numpy()[traffic.user_idx],
            "post_id": world.posts["post_id"].to_numpy()[traffic.post_idx],
            "ts": traffic.ts,
            "position": traffic.position,
            "true_p": true_p,
            "engaged_ts": traffic.ts + pd.to_timedelta(np.where(engaged, delay, np.nan), unit="s"),
        }
    )
    impressions = impressions.sort_values("ts", kind="stable", ignore_index=True)
    impressions.insert(0, "imp_id", np.arange(1, p.n_impressions + 1, dtype="int64"))
    clicked = impressions["engaged_ts"].notna()
    engagements = impressions.loc[clicked, ["imp_id", "engaged_ts"]].reset_index(drop=True)
    follows = pd.DataFrame(
        {
            "user_id": np.repeat(world.users["user_id"].to_numpy(), world.follows.shape[1]),
            "author_id": world.follows.ravel().astype("int64") + 1,
        }
    )
    return {
        "users": world.users,
        "authors": world.authors,
        "posts": world.posts.drop(columns="author_idx"),
        "follows": follows,
        "impressions": impressions.drop(columns="engaged_ts"),
        "engagements": engagements,
    }


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Labelled impressions: the post's author, type and age, whether the user follows the author,
    ``engaged`` (0/1) and ``engaged_ts``."""
    posts = raw["posts"][["post_id", "author_id", "post_type", "created_ts"]]
    events = raw["impressions"].merge(posts, on="post_id", how="left")
    follows = raw["follows"][["user_id", "author_id"]].drop_duplicates().assign(followed=1)
    events = events.merge(follows, on=["user_id", "author_id"], how="left")
    events["followed"] = events["followed"].fillna(0).astype("int64")
    events["post_age_h"] = (events["ts"] - events["created_ts"]).dt.total_seconds() / 3600
    events = events.merge(raw["engagements"], on="imp_id", how="left")
    events["engaged"] = events["engaged_ts"].notna().astype("int64")
    return events[list(spec.tables[spec.events_table].columns)]


def build_feature_tables(
    spec: ProblemSpec,
    raw: Mapping[str, pd.DataFrame],
    events: pd.DataFrame,
    params: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """user_profile, and engagement-rate snapshots per user, author, (user, author) and post
    (point in time: :func:`mlsd.problems.synthetic.rate_snapshots`)."""
    f = FeatureParams.model_validate(dict(params))
    users = raw["users"]
    tables = {"user_profile": users[["user_id", "device"]].assign(event_timestamp=users["signup_ts"])}
    for source, (keys, prefix, group) in RATE_TABLES.items():
        names = (f"{prefix}_imps", f"{prefix}_eng_rate")
        prior = (f.prior_rate, f.prior_weight)
        tables[source] = rate_snapshots(events, keys, "engaged_ts", getattr(f, group), names, prior)
    return tables


SimulationScenario = Literal["none", "covariate_shift", "concept_drift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` candidate-scoring requests from the world the pipeline's data came from, and their
    true P(engage).

    The world (users, authors, posts, follows, latent drivers, intercept) is the one ``generate``
    built with the same ``params``; sessions fall in the data's last day, so the posts are ones the
    online store knows. Each request is one (user, post) candidate with its serving context.

    - ``none``: traffic as in the training data.
    - ``covariate_shift``: desktop users arrive 4x as often, fewer candidates come from followed
      authors and they are older (the inputs ``device``, ``followed``, ``post_age_h`` shift).
    - ``concept_drift``: same traffic; type preferences are redrawn and the follow boost and
      recency decay halve (the inputs do not shift; their relation to engagement does).
    - ``new_entities``: every user is new (no stored features, no follows, their own taste).
    """
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world = FeedWorld.create(p)
    rng = np.random.default_rng(seed)
    span = (p.end_time() - timedelta(days=1), p.end_time())
    user_ids = world.users["user_id"].to_numpy()
    truth = world
    if scenario == "covariate_shift":
        desktop = np.where(world.users["device"].to_numpy() == "desktop", 4.0, 1.0)
        traffic = world.draw(
            rng, n, span, activity=world.activity * desktop, followed_share=0.3, freshness=0.2
        )
    elif scenario == "new_entities":
        traffic = world.draw(rng, n, span, followed_share=0.0)
        traffic = dataclasses.replace(traffic, followed=np.zeros(n, dtype="int64"))
        user_ids = int(user_ids.max()) + 1 + np.arange(len(user_ids))
        truth = dataclasses.replace(
            world,
            taste_u=rng.normal(0, 1 / np.sqrt(p.latent_dim), world.taste_u.shape),
            user_bias=rng.normal(0, p.user_sd, len(user_ids)),
        )
    else:
        traffic = world.draw(rng, n, span)
        if scenario == "concept_drift":
            truth = world.drifted()
    posts = world.posts.iloc[traffic.post_idx]
    requests = [
        {
            "user_id": int(u),
            "post_id": int(post),
            "author_id": int(a),
            "post_type": str(kind),
            "post_age_h": float(age),
            "position": int(pos),
            "followed": int(fol),
        }
        for u, post, a, kind, age, pos, fol in zip(
            user_ids[traffic.user_idx],
            posts["post_id"],
            posts["author_id"],
            posts["post_type"],
            traffic.age_h,
            traffic.position,
            traffic.followed,
            strict=True,
        )
    ]
    return requests, expit(truth.logit(traffic))
