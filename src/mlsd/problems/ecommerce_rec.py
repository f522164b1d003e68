"""E-commerce recommendation: a shop with known tastes, budgets and item quality, and its features.

The world: each item has a category, a brand, a price near its category's and a Zipf popularity
(``bias = -zipf * log(rank)``); its latent vector sits near its category's direction. Each user has
a taste over categories, a budget (log-normal) and an activity level. Per user, item and day:

    views ~ Poisson(view_rate),  view_rate = activity * exp(taste . vector + bias + intercept)
    buys  ~ Binomial(views, p_buy)
    p_buy = sigmoid(buy_intercept + quality - price_sensitivity * |log price - log budget|)
    carts = buys + Binomial(views - buys, cart_rate)

so purchases are a subset of views (and carts a superset of purchases). The truth of a pair is
its expected purchases per day, ``view_rate * p_buy``: the oracle ranks a user's items by it.
Views say what a user looks at, not what they can afford: a candidate model fitted on views finds
the right shelf, a ranker that also reads prices and the user's past purchases finds the item.
``true_buy_rate`` is stored beside every row and is never a feature; :func:`true_rates`
recomputes it for any pairs (the oracle needs the items a user never viewed too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import Field

from mlsd.problems.synthetic import DailyWindowParams, TasteWorldParams, sigmoid, window_sums
from mlsd.spec import ProblemSpec

CATEGORIES = ["electronics", "home", "fashion", "beauty", "sports", "toys", "books", "grocery"]
SEGMENTS = ["new", "regular", "vip"]


class GeneratorParams(TasteWorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_users: int = Field(default=2000, ge=20)
    n_items: int = Field(default=2000, ge=20)
    n_brands: int = Field(default=60, ge=1)
    days: int = Field(default=21, ge=5)
    views_per_user_day: float = Field(default=5.0, gt=0, description="mean item views of a user per day")
    buy_share: float = Field(default=0.08, gt=0, lt=1, description="mean purchases per view")
    cart_rate: float = Field(default=0.1, ge=0, le=1, description="chance a viewed, unbought item is carted")
    zipf: float = Field(default=0.6, ge=0, description="Zipf exponent of item popularity (log scale)")
    price_sensitivity: float = Field(default=2.0, ge=0, description="how much a price off budget stops a buy")
    quality_sd: float = Field(default=0.7, ge=0, description="spread of item quality (buy logit)")


class FeatureParams(DailyWindowParams):
    """conf/base/parameters_problem.yml ``features:`` block."""


@dataclass(frozen=True)
class ShopWorld:
    """The latent truth of one seeded world."""

    users: pd.DataFrame
    items: pd.DataFrame
    taste: np.ndarray  # [users, categories]
    vectors: np.ndarray  # [items, categories]
    bias: np.ndarray  # [items]
    quality: np.ndarray  # [items]
    log_budget: np.ndarray  # [users]
    log_activity: np.ndarray  # [users]
    intercept: float
    buy_intercept: float
    price_sensitivity: float

    @classmethod
    def create(cls, p: GeneratorParams) -> ShopWorld:
        rng = np.random.default_rng(p.seed)
        n_cat = len(CATEGORIES)
        category, vectors = p.item_groups(rng, n_cat, p.n_items)
        bias = -p.zipf * np.log(rng.permutation(p.n_items) + 1.0)
        cat_price = rng.uniform(np.log(8), np.log(300), n_cat)
        log_price = cat_price[category] + rng.normal(0, 0.6, p.n_items)
        taste, log_activity = p.user_taste(rng, n_cat, p.n_users)
        # A budget near what the user's favourite categories cost, give or take.
        log_budget = (taste.clip(0) @ cat_price) / np.maximum(taste.clip(0).sum(axis=1), 1e-9)
        log_budget = log_budget + rng.normal(0, 0.5, p.n_users)
        per_user = np.exp(log_activity)[:, None] * np.exp(taste @ vectors.T + bias)
        intercept = float(np.log(p.views_per_user_day / per_user.sum(axis=1).mean()))
        quality = rng.normal(0, p.quality_sd, p.n_items)
        mismatch = np.abs(log_price[None, :] - log_budget[:, None])
        logit = quality[None, :] - p.price_sensitivity * mismatch
        weights = per_user / per_user.sum()  # the buy share is per view: weight pairs by views
        low, high = -20.0, 20.0
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if (weights * sigmoid(logit + mid)).sum() < p.buy_share else (low, mid)
        start = p.end_time() - timedelta(days=p.days)
        per_cat = max(p.n_brands // n_cat, 1)  # each brand sells in one category
        users = pd.DataFrame(
            {
                "user_id": np.arange(1, p.n_users + 1, dtype="int64"),
                "segment": rng.choice(SEGMENTS, p.n_users),
                "signup_ts": start - pd.to_timedelta(rng.uniform(1, 730, p.n_users), unit="D"),
            }
        )
        items = pd.DataFrame(
            {
                "item_id": np.arange(100001, 100001 + p.n_items, dtype="int64"),
                "category": np.asarray(CATEGORIES)[category],
                "brand": [f"b{b:03d}" for b in category * per_cat + rng.integers(0, per_cat, p.n_items)],
                "price": np.round(np.exp(log_price), 2),
            }
        )
        return cls(
            users, items, taste, vectors, bias, quality, log_budget, log_activity,
            intercept, (low + high) / 2, p.price_sensitivity,
        )  # fmt: skip

    def view_rates(self, user_idx: np.ndarray) -> np.ndarray:
        """True views per day of each listed user for every item, ``[len(user_idx), items]``."""
        logits = self.taste[user_idx] @ self.vectors.T + self.bias + self.intercept
        return np.exp(self.log_activity[user_idx, None] + logits)

    def buy_probability(self, user_idx: np.ndarray) -> np.ndarray:
        """P(buy | view) of each listed user for every item."""
        log_price = np.log(self.items["price"].to_numpy())
        mismatch = np.abs(log_price[None, :] - self.log_budget[user_idx, None])
        return sigmoid(self.buy_intercept + self.quality[None, :] - self.price_sensitivity * mismatch)


def true_rates(
    spec: ProblemSpec, params: Mapping[str, Any], user_ids: np.ndarray, item_ids: np.ndarray
) -> np.ndarray:
    """The generator's expected purchases per day of every (user, item) pair, ``[users, items]``.

    Rebuilt from the generator parameters (the world is a pure function of them), so the oracle can
    rank the items a user never viewed. Unknown ids get NaN.
    """
    world = ShopWorld.create(GeneratorParams.model_validate(dict(params)))
    users = pd.Index(world.users["user_id"]).get_indexer(np.asarray(user_ids))
    items = pd.Index(world.items["item_id"]).get_indexer(np.asarray(item_ids))
    rows = np.maximum(users, 0)
    rates = (world.view_rates(rows) * world.buy_probability(rows))[:, np.maximum(items, 0)]
    rates[users < 0, :] = np.nan
    rates[:, items < 0] = np.nan
    return rates


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables users, items and activity (one row per user, item and day with a view)."""
    p = GeneratorParams.model_validate(dict(params))
    world = ShopWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    all_users = np.arange(p.n_users)
    rates, p_buy = world.view_rates(all_users), world.buy_probability(all_users)
    start = p.end_time() - timedelta(days=p.days)
    parts = []
    for day in range(p.days):
        views = rng.poisson(rates)
        u, i = np.nonzero(views)
        n = views[u, i]
        buys = rng.binomial(n, p_buy[u, i])
        carts = buys + rng.binomial(n - buys, p.cart_rate)
        seconds = rng.integers(0, 86400, len(u))
        parts.append(
            pd.DataFrame(
                {
                    "user_id": world.users["user_id"].to_numpy()[u],
                    "item_id": world.items["item_id"].to_numpy()[i],
                    "views": n.astype("int64"),
                    "carts": carts.astype("int64"),
                    "buys": buys.astype("int64"),
                    "ts": start + pd.to_timedelta(day * 86400 + seconds, unit="s"),
                    "true_buy_rate": rates[u, i] * p_buy[u, i],
                }
            )
        )
    activity = pd.concat(parts).sort_values("ts", kind="stable").reset_index(drop=True)
    return {"users": world.users, "items": world.items, "activity": activity}


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Engagements: the activity with the item's category and price (what the ranker reads)."""
    items = raw["items"][["item_id", "category", "price"]]
    events = raw["activity"].merge(items, on="item_id", how="left")
    return events[list(spec.tables[spec.events_table].columns)]


def build_feature_tables(
    spec: ProblemSpec,
    raw: Mapping[str, pd.DataFrame],
    events: pd.DataFrame,
    params: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """Daily snapshots of views and purchases over the window before each snapshot, per user
    (user_activity) and per item (item_sales); every user and item gets a row every day."""
    f = FeatureParams.model_validate(dict(params))
    origin = events["ts"].min().floor("D")
    day = ((events["ts"] - origin) // pd.Timedelta(days=1)).to_numpy()
    n_days = int(day.max()) + 1
    snapshots = origin + pd.to_timedelta(np.arange(1, n_days + 1), unit="D")
    views = (
        ("user_activity", "user_id", raw["users"]["user_id"], "user"),
        ("item_sales", "item_id", raw["items"]["item_id"], "item"),
    )
    tables = {}
    for source, key, id_column, prefix in views:
        ids = pd.Index(id_column)
        row = ids.get_indexer(events[key])
        table = pd.DataFrame(
            {key: np.repeat(ids.to_numpy(), n_days), "event_timestamp": np.tile(snapshots, len(ids))}
        )
        for column in ("views", "buys"):
            grid = np.zeros((len(ids), n_days))
            np.add.at(grid, (row, day), events[column].to_numpy())
            table[f"{prefix}_{column}_7d"] = window_sums(grid, f.window_days).ravel().astype("int64")
        tables[source] = table
    return tables


SimulationScenario = Literal["none", "covariate_shift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` recommendation requests from the world the pipeline's data came from, and for each the
    chance the user buys one of its ``serving.top_k`` best items within a day.

    That chance, ``1 - exp(-sum of the top-k true purchase rates)``, is what a perfect list would
    earn; the simulator does not read responses, so online quality from it is a ceiling, not the
    model's. Scenarios: ``none``; ``covariate_shift`` (the most active tenth of users send most
    requests, so logged activity features shift); ``new_entities`` (user ids the store and model
    never saw: they get the cold-start list).
    """
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world = ShopWorld.create(p)
    rng = np.random.default_rng(seed)
    weight = np.exp(world.log_activity)
    if scenario == "covariate_shift":
        weight = weight * np.where(world.log_activity >= np.quantile(world.log_activity, 0.9), 30.0, 1.0)
    user_idx = rng.choice(p.n_users, n, p=weight / weight.sum())
    k = spec.serving.top_k or 10
    buy_rates = world.view_rates(user_idx) * world.buy_probability(user_idx)
    true_p = 1 - np.exp(-(-np.sort(-buy_rates, axis=1)[:, :k]).sum(axis=1))
    user_ids = world.users["user_id"].to_numpy()[user_idx]
    if scenario == "new_entities":
        user_ids = int(world.users["user_id"].max()) + 1 + np.arange(n)
    return [{"user_id": int(u)} for u in user_ids], true_p
