"""Artist recommendation: a synthetic listening world with known tastes, and its features.

The world: each artist has a genre and a latent vector near its genre's direction plus a
popularity bias; each user has a latent taste concentrated on a few genres and an activity level.
A user plays an artist on a given day ``Poisson(rate)`` times with

    rate(u, a) = activity(u) * exp(taste(u) . vector(a) + bias(a) + intercept)

(the intercept sets the mean plays per user and day). Plays are drawn day by day, so a split by
time works, and the true rate of every (user, artist) pair is known: the oracle ranks a user's
artists by it (activity scales a user's rates but never changes their order). ``true_rate`` is
stored beside every play and is never a feature; :func:`true_rates` recomputes it for any pairs
(the oracle needs the artists a user did *not* play too).

Feature tables (daily snapshots, windows ending strictly before the snapshot): plays and distinct
artists per user, plays and distinct listeners per artist. The retrieval model itself reads only
the user id; these features feed drift monitoring and are logged with every served request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import Field

from mlsd.problems.synthetic import DailyWindowParams, TasteWorldParams, window_sums
from mlsd.spec import ProblemSpec

GENRES = ["rock", "pop", "hiphop", "jazz", "classical", "electronic", "folk", "metal"]
COUNTRIES = ["US", "GB", "DE", "SE", "BR"]


class GeneratorParams(TasteWorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_users: int = Field(default=1500, ge=20)
    n_artists: int = Field(default=300, ge=20)
    days: int = Field(default=14, ge=3)
    plays_per_user_day: float = Field(default=6.0, gt=0, description="mean plays of a user per day")
    bias_sd: float = Field(default=0.8, ge=0, description="spread of artist popularity (log scale)")


class FeatureParams(DailyWindowParams):
    """conf/base/parameters_problem.yml ``features:`` block."""


@dataclass(frozen=True)
class ListeningWorld:
    """The latent truth of one seeded world."""

    users: pd.DataFrame
    artists: pd.DataFrame
    taste: np.ndarray  # [users, genres]
    vectors: np.ndarray  # [artists, genres]
    bias: np.ndarray  # [artists]
    log_activity: np.ndarray  # [users]
    intercept: float

    @classmethod
    def create(cls, p: GeneratorParams) -> ListeningWorld:
        rng = np.random.default_rng(p.seed)
        n_genres = len(GENRES)
        genre, vectors = p.item_groups(rng, n_genres, p.n_artists)
        bias = rng.normal(0, p.bias_sd, p.n_artists)
        taste, log_activity = p.user_taste(rng, n_genres, p.n_users)
        logits = taste @ vectors.T + bias
        per_user = np.exp(log_activity)[:, None] * np.exp(logits)
        intercept = float(np.log(p.plays_per_user_day / per_user.sum(axis=1).mean()))
        start = p.end_time() - timedelta(days=p.days)
        users = pd.DataFrame(
            {
                "user_id": np.arange(1, p.n_users + 1, dtype="int64"),
                "country": rng.choice(COUNTRIES, p.n_users),
                "signup_ts": start - pd.to_timedelta(rng.uniform(1, 365, p.n_users), unit="D"),
            }
        )
        # Popularity as a catalogue would list it: 0-100 from the artist's bias (a raw attribute).
        ranks = pd.Series(bias).rank(pct=True).to_numpy()
        artists = pd.DataFrame(
            {
                "artist_id": np.arange(1001, 1001 + p.n_artists, dtype="int64"),
                "genre": np.asarray(GENRES)[genre],
                "popularity": np.round(100 * ranks).astype("int64"),
            }
        )
        return cls(users, artists, taste, vectors, bias, log_activity, intercept)

    def rates(self, user_idx: np.ndarray) -> np.ndarray:
        """True plays per day of each listed user for every artist, ``[len(user_idx), artists]``."""
        logits = self.taste[user_idx] @ self.vectors.T + self.bias + self.intercept
        return np.exp(self.log_activity[user_idx, None] + logits)


def true_rates(
    spec: ProblemSpec, params: Mapping[str, Any], user_ids: np.ndarray, artist_ids: np.ndarray
) -> np.ndarray:
    """The generator's true daily play rate for every (user, artist) pair, ``[users, artists]``.

    Rebuilt from the generator parameters (the world is a pure function of them), so the oracle can
    rank the artists a user never played. Unknown ids get NaN.
    """
    world = ListeningWorld.create(GeneratorParams.model_validate(dict(params)))
    users = pd.Index(world.users["user_id"]).get_indexer(np.asarray(user_ids))
    artists = pd.Index(world.artists["artist_id"]).get_indexer(np.asarray(artist_ids))
    rates = world.rates(np.maximum(users, 0))[:, np.maximum(artists, 0)]
    rates[users < 0, :] = np.nan
    rates[:, artists < 0] = np.nan
    return rates


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables users, artists and plays (one row per user, artist and day with a play)."""
    p = GeneratorParams.model_validate(dict(params))
    world = ListeningWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    rates = world.rates(np.arange(p.n_users))
    start = p.end_time() - timedelta(days=p.days)
    parts = []
    for day in range(p.days):
        counts = rng.poisson(rates)
        user_idx, artist_idx = np.nonzero(counts)
        seconds = rng.integers(0, 86400, len(user_idx))
        parts.append(
            pd.DataFrame(
                {
                    "user_id": world.users["user_id"].to_numpy()[user_idx],
                    "artist_id": world.artists["artist_id"].to_numpy()[artist_idx],
                    "play_count": counts[user_idx, artist_idx].astype("int64"),
                    "ts": start + pd.to_timedelta(day * 86400 + seconds, unit="s"),
                    "true_rate": rates[user_idx, artist_idx],
                }
            )
        )
    plays = pd.concat(parts).sort_values("ts", kind="stable").reset_index(drop=True)
    return {"users": world.users, "artists": world.artists, "plays": plays}


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Listens: the plays with the artist's genre (one row per user, artist and day)."""
    events = raw["plays"].merge(raw["artists"][["artist_id", "genre"]], on="artist_id", how="left")
    return events[list(spec.tables[spec.events_table].columns)]


def build_feature_tables(
    spec: ProblemSpec,
    raw: Mapping[str, pd.DataFrame],
    events: pd.DataFrame,
    params: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """Daily snapshots: user_activity (plays, distinct artists) and artist_popularity (plays,
    distinct listeners), each over the window before the snapshot; every user and artist gets a
    row every day (zero activity is information too)."""
    f = FeatureParams.model_validate(dict(params))
    users = pd.Index(raw["users"]["user_id"])
    artists = pd.Index(raw["artists"]["artist_id"])
    origin = events["ts"].min().floor("D")
    day = ((events["ts"] - origin) // pd.Timedelta(days=1)).to_numpy()
    n_days = int(day.max()) + 1
    u, a = users.get_indexer(events["user_id"]), artists.get_indexer(events["artist_id"])
    plays = np.zeros((len(users), len(artists), n_days))
    np.add.at(plays, (u, a, day), events["play_count"].to_numpy())
    snapshots = origin + pd.to_timedelta(np.arange(1, n_days + 1), unit="D")
    # Distinct artists (listeners) in the window: a pair counts once if it played on any day in it.
    presence = window_sums((plays > 0).reshape(-1, n_days), f.window_days).reshape(plays.shape) > 0
    views = (
        ("user_activity", "user_id", users, 1, ("user_plays_7d", "user_artists_7d")),
        ("artist_popularity", "artist_id", artists, 0, ("artist_plays_7d", "artist_listeners_7d")),
    )
    tables = {}
    for source, key, ids, other_axis, names in views:
        total, distinct = plays.sum(axis=other_axis), presence.sum(axis=other_axis)
        sums = window_sums(total, f.window_days)
        tables[source] = pd.DataFrame(
            {
                key: np.repeat(ids.to_numpy(), n_days),
                "event_timestamp": np.tile(snapshots, len(ids)),
                names[0]: sums.ravel().astype("int64"),
                names[1]: distinct.ravel().astype("int64"),
            }
        )
    return tables


SimulationScenario = Literal["none", "covariate_shift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` recommendation requests from the world the pipeline's data came from, and for each the
    chance the user plays one of its ``serving.top_k`` best artists within a day.

    That chance, ``1 - exp(-sum of the top-k true rates / plays_per_user_day)``, is what a perfect
    list would earn; feedback drawn from it does not depend on what the served list held (the
    simulator does not read responses), so online quality from it is a ceiling, not the model's.
    Scenarios: ``none``; ``covariate_shift`` (the most active tenth of users send most requests,
    so logged activity features shift); ``new_entities`` (user ids the store and model never saw:
    they get the cold-start list).
    """
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world = ListeningWorld.create(p)
    rng = np.random.default_rng(seed)
    weight = np.exp(world.log_activity)
    if scenario == "covariate_shift":
        weight = weight * np.where(world.log_activity >= np.quantile(world.log_activity, 0.9), 30.0, 1.0)
    user_idx = rng.choice(p.n_users, n, p=weight / weight.sum())
    k = spec.serving.top_k or 10
    best = -np.sort(-world.rates(user_idx), axis=1)[:, :k].sum(axis=1)
    true_p = 1 - np.exp(-best / p.plays_per_user_day)
    user_ids = world.users["user_id"].to_numpy()[user_idx]
    if scenario == "new_entities":
        user_ids = int(world.users["user_id"].max()) + 1 + np.arange(n)
    return [{"user_id": int(u)} for u in user_ids], true_p
