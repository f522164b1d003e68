"""Video search: a synthetic catalogue of videos about topics, searches with known relevance.

The world: each topic has its own vocabulary (no word belongs to two topics) and a few generic
words every video may use ("video", "best" ...). A video is about one topic; its title and tags
are words of that topic (frequent ones more often) plus a generic word; it has a hidden quality.
A search is a user picking one of their favourite topics and typing one to three of its words.
The chance a user clicks a shown video is

    P(click | query, video) = sigmoid(a * match(query, video) + b * quality(video) + c)

with ``match`` the share of the query's words the video's text holds (0 for any other topic):
relevant means same topic and matching words, and among those, better videos are clicked more.
Quality is hidden; what a model sees is its trace in popularity: views from outside search
(``Poisson(exp(m + b_views * quality))`` a day) and the click rate of past impressions.

Each search shows ``shown`` videos (an earlier system's list: videos matching a query word, then
same-topic and random videos, in random order); each is clicked with its true probability, which
is stored beside it (``true_p``, never a feature). :func:`true_rates` recomputes it for any query
and video, so the oracle ranks the whole catalogue by it. Text is lowercase ASCII tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlsd.problems.synthetic import WindowParams, WorldParams, rate_snapshots, sigmoid
from mlsd.spec import ProblemSpec

GENERIC = ["video", "best", "new", "top", "full", "official", "guide", "live"]
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


class GeneratorParams(WorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_topics: int = Field(default=25, ge=2, le=200)
    words_per_topic: int = Field(default=30, ge=5, le=200)
    n_videos: int = Field(default=2500, ge=50, le=20_000)
    n_users: int = Field(default=2000, ge=10)
    searches_per_day: int = Field(default=2500, ge=10)
    days: int = Field(default=14, ge=3)
    shown: int = Field(default=10, ge=2, le=50, description="videos shown per search")
    title_words: int = Field(default=4, ge=1, le=20)
    tag_words: int = Field(default=3, ge=0, le=20)
    match_weight: float = Field(default=4.0, ge=0, description="a in the click model")
    quality_weight: float = Field(default=1.2, ge=0, description="b in the click model")
    click_intercept: float = Field(default=-3.5, description="c in the click model")
    views_per_day: float = Field(default=20.0, gt=0, description="median outside views of a video a day")
    views_quality: float = Field(default=0.8, ge=0, description="how much quality drives outside views")


class FeatureParams(BaseModel):
    """conf/base/parameters_problem.yml ``features:`` block."""

    model_config = ConfigDict(extra="forbid")

    video: WindowParams = WindowParams(every=timedelta(days=1), windows=["7d"])
    user: WindowParams = WindowParams(every=timedelta(days=1), windows=["7d"])
    prior_rate: float = Field(default=0.05, gt=0, lt=1, description="smoothing prior of click rates")
    prior_weight: float = Field(default=20.0, ge=0, description="pseudo-impressions behind the prior")


def _vocabulary(n_topics: int, words: int) -> np.ndarray:
    """``[topics, words]`` distinct made-up words (two or three syllables), the same for any seed."""
    rng = np.random.default_rng(0)
    out: list[str] = []
    seen = set(GENERIC)
    while len(out) < n_topics * words:
        word = "".join(rng.choice(_SYLLABLES, rng.integers(2, 4)))
        if word not in seen:
            seen.add(word)
            out.append(word)
    return np.asarray(out).reshape(n_topics, words)


@dataclass(frozen=True)
class VideoWorld:
    """The latent truth of one seeded world."""

    vocabulary: np.ndarray  # [topics, words]
    videos: pd.DataFrame  # video_id, topic, title, tags, duration_s
    quality: np.ndarray  # [videos]
    word_sets: list[frozenset[str]]  # each video's words
    word_index: dict[str, int]  # every word -> its column in ``words``
    words: np.ndarray  # [videos, vocabulary] 0/1: the video's text holds the word
    taste: np.ndarray  # [users, topics]: each user's topic probabilities
    params: GeneratorParams

    @classmethod
    def create(cls, p: GeneratorParams) -> VideoWorld:
        rng = np.random.default_rng(p.seed)
        vocabulary = _vocabulary(p.n_topics, p.words_per_topic)
        zipf = 1.0 / np.arange(1, p.words_per_topic + 1)
        zipf /= zipf.sum()
        topic = rng.integers(0, p.n_topics, p.n_videos)
        titles, tags, sets = [], [], []
        for t in topic:
            words = rng.choice(vocabulary[t], p.title_words + p.tag_words, replace=False, p=zipf)
            title = [*words[: p.title_words], str(rng.choice(GENERIC))]
            titles.append(" ".join(rng.permutation(title)))
            tags.append(" ".join(words[p.title_words :]))
            sets.append(frozenset([*title, *words[p.title_words :]]))
        videos = pd.DataFrame(
            {
                "video_id": np.arange(100_001, 100_001 + p.n_videos, dtype="int64"),
                "topic": topic.astype("int64"),
                "title": titles,
                "tags": tags,
                "duration_s": np.round(rng.lognormal(np.log(300), 0.7, p.n_videos)).astype("int64") + 10,
            }
        )
        taste = rng.dirichlet(np.full(p.n_topics, 0.2), p.n_users)
        index = {w: i for i, w in enumerate([*GENERIC, *vocabulary.ravel()])}
        words = np.zeros((p.n_videos, len(index)), dtype=np.float32)
        for v, text in enumerate(sets):
            words[v, [index[w] for w in text]] = 1.0
        return cls(vocabulary, videos, rng.normal(0, 1, p.n_videos), sets, index, words, taste, p)

    def click_p(self, queries: np.ndarray, video_idx: np.ndarray) -> np.ndarray:
        """True P(click) of every query with every listed video, ``[len(queries), len(video_idx)]``.

        ``match`` is the share of the query's distinct words the video holds (words outside the
        world's vocabulary count as unmatched)."""
        p = self.params
        asked = np.zeros((len(queries), len(self.word_index)), dtype=np.float32)
        n_words = np.zeros(len(queries))
        for i, query in enumerate(queries):
            distinct = set(str(query).split())
            n_words[i] = len(distinct)
            asked[i, [self.word_index[w] for w in distinct if w in self.word_index]] = 1.0
        match = (asked @ self.words[video_idx].T) / np.maximum(n_words, 1)[:, None]
        logit = p.match_weight * match + p.quality_weight * self.quality[video_idx] + p.click_intercept
        return np.asarray(sigmoid(logit))


def true_rates(
    spec: ProblemSpec, params: Mapping[str, Any], queries: np.ndarray, video_ids: np.ndarray
) -> np.ndarray:
    """The generator's true P(click) for every (query text, video) pair, ``[queries, videos]``;
    unknown video ids get NaN (the world is a pure function of the generator parameters)."""
    world = VideoWorld.create(GeneratorParams.model_validate(dict(params)))
    idx = pd.Index(world.videos["video_id"]).get_indexer(np.asarray(video_ids))
    rates = world.click_p(np.asarray(queries), np.maximum(idx, 0))
    rates[:, idx < 0] = np.nan
    return rates


def _draw_query(world: VideoWorld, rng: np.random.Generator, topic: int) -> str:
    words = world.vocabulary[topic]
    zipf = 1.0 / np.arange(1, len(words) + 1)
    return " ".join(rng.choice(words, rng.integers(1, 4), replace=False, p=zipf / zipf.sum()))


def _shown(world: VideoWorld, rng: np.random.Generator, query: str, topic: int, n: int) -> np.ndarray:
    """An earlier system's list: videos holding a query word, then same-topic, then any videos."""
    words = set(query.split())
    topical = np.flatnonzero(world.videos["topic"].to_numpy() == topic)
    matching = np.array([v for v in topical if words & world.word_sets[v]], dtype=np.int64)
    pool = [
        rng.permutation(matching)[: n // 2 + 2],
        rng.permutation(topical)[:n],
        rng.integers(0, len(world.videos), n),
    ]
    return pd.unique(np.concatenate(pool))[:n]


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables users, videos, searches (one row per search) and impressions (one per shown video)."""
    p = GeneratorParams.model_validate(dict(params))
    world = VideoWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    start = p.end_time() - timedelta(days=p.days)
    n = p.searches_per_day * p.days
    user_idx = rng.integers(0, p.n_users, n)
    ts = start + pd.to_timedelta(np.sort(rng.uniform(0, p.days * 86400, n)), unit="s").floor("s")
    searches, impressions = [], []
    for s in range(n):
        topic = int(rng.choice(p.n_topics, p=world.taste[user_idx[s]]))
        query = _draw_query(world, rng, topic)
        shown = _shown(world, rng, query, topic, p.shown)
        true_p = world.click_p(np.array([query]), shown)[0]
        searches.append((s + 1, int(user_idx[s]) + 1, query, ts[s]))
        impressions.append((np.full(len(shown), s + 1), shown, np.arange(1, len(shown) + 1), true_p))
    search_id, video_idx, position, true_p = (np.concatenate(c) for c in zip(*impressions, strict=True))
    clicked = rng.random(len(true_p)) < true_p
    duration = world.videos["duration_s"].to_numpy()[video_idx]
    watch = np.where(
        clicked, duration * sigmoid(world.quality[video_idx]) * rng.uniform(0.5, 1, len(true_p)), 0
    )
    frame = pd.DataFrame(searches, columns=["search_id", "user_id", "query", "ts"])
    frame["search_id"] = frame["search_id"].astype("int64")
    frame["user_id"] = frame["user_id"].astype("int64")
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, p.n_users + 1, dtype="int64"),
            "signup_ts": start - pd.to_timedelta(rng.uniform(1, 365, p.n_users), unit="D"),
        }
    )
    shown = pd.DataFrame(
        {
            "search_id": search_id.astype("int64"),
            "video_id": world.videos["video_id"].to_numpy()[video_idx],
            "position": position.astype("int64"),
            "clicked": clicked.astype("int64"),
            "watch_s": np.round(watch, 1),
            "true_p": true_p,
        }
    )
    views = _daily_views(world, rng, start)
    videos = world.videos.drop(columns="topic")
    return {"users": users, "videos": videos, "searches": frame, "impressions": shown, "views": views}


def _daily_views(world: VideoWorld, rng: np.random.Generator, start: pd.Timestamp) -> pd.DataFrame:
    """Views from outside search, one row per video and day: popularity that follows quality."""
    p = world.params
    rate = p.views_per_day * np.exp(p.views_quality * world.quality)
    counts = rng.poisson(np.tile(rate, (p.days, 1)))
    return pd.DataFrame(
        {
            "video_id": np.tile(world.videos["video_id"].to_numpy(), p.days),
            "day": start + pd.to_timedelta(np.repeat(np.arange(p.days), p.n_videos), unit="D"),
            "views": counts.ravel().astype("int64"),
        }
    )


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Search results: one row per shown video, with the search's query and time and the video's
    text (title and tags: what a search index holds), clicks stamped one minute after the search."""
    videos = raw["videos"].assign(video_text=raw["videos"]["title"] + " " + raw["videos"]["tags"])
    events = (
        raw["impressions"]
        .merge(raw["searches"], on="search_id")
        .merge(videos[["video_id", "video_text"]], on="video_id")
    )
    events["clicked_ts"] = events["ts"].where(events["clicked"] == 1) + pd.Timedelta(minutes=1)
    events = events.sort_values(["ts", "search_id", "position"], kind="stable").reset_index(drop=True)
    return events[list(spec.tables[spec.events_table].columns)]


def build_feature_tables(
    spec: ProblemSpec,
    raw: Mapping[str, pd.DataFrame],
    events: pd.DataFrame,
    params: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """Daily snapshots: video_stats (impressions and smoothed click rate in search, outside views,
    over the window before the snapshot) and user_activity (the user's impressions and click rate)."""
    f = FeatureParams.model_validate(dict(params))
    prior = (f.prior_rate, f.prior_weight)
    video = rate_snapshots(events, ["video_id"], "clicked_ts", f.video, ("video_imps", "video_ctr"), prior)
    user = rate_snapshots(events, ["user_id"], "clicked_ts", f.user, ("user_imps", "user_ctr"), prior)
    views = raw["views"]
    for label in f.video.windows:
        window = pd.Timedelta(label)
        stamps = video[["video_id", "event_timestamp"]].merge(views, on="video_id")
        inside = (stamps["day"] < stamps["event_timestamp"]) & (
            stamps["day"] >= stamps["event_timestamp"] - window
        )
        summed = stamps[inside].groupby(["video_id", "event_timestamp"])["views"].sum()
        total = video.set_index(["video_id", "event_timestamp"]).index.map(summed).fillna(0).to_numpy()
        video[f"video_log_views_{label}"] = np.log1p(total).astype("float32")
    return {"video_stats": video, "user_activity": user}


SimulationScenario = Literal["none", "covariate_shift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` search requests from the world the pipeline's data came from, and for each the chance
    the user clicks one of the ``serving.top_k`` best videos for the query (a perfect list's
    chance, assuming independent clicks: the simulator does not read responses).

    Scenarios: ``none``; ``covariate_shift`` (every search is about one topic, so query words
    shift); ``new_entities`` (user ids never seen: routing and logged features use defaults).
    """
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world = VideoWorld.create(p)
    rng = np.random.default_rng(seed)
    user_idx = rng.integers(0, p.n_users, n)
    topics = [int(rng.choice(p.n_topics, p=world.taste[u])) for u in user_idx]
    if scenario == "covariate_shift":
        topics = [0] * n
    queries = [_draw_query(world, rng, t) for t in topics]
    k = spec.serving.top_k or 10
    best = -np.sort(-world.click_p(np.asarray(queries), np.arange(p.n_videos)), axis=1)[:, :k]
    true_p = 1 - np.prod(1 - best, axis=1)
    user_ids = user_idx + 1
    if scenario == "new_entities":
        user_ids = p.n_users + 1 + np.arange(n)
    return [{"user_id": int(u), "query": q} for u, q in zip(user_ids, queries, strict=True)], true_p
