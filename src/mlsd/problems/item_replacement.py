"""Item replacement: which substitute a customer accepts for an out-of-stock item, with a known truth.

The world: a grocery catalog of products (brand, size, price) in aisles grouped into departments.
The catalog proposes a fixed list of substitutes for every product, mostly from its aisle and a few
from other aisles of its department. When an ordered product is out of stock (an *event*; popular
products run out more often), the shopper offers several candidates from that list and the customer
accepts or rejects each. Acceptance follows

    true_p = sigmoid(intercept + dept_bias[dept] + brand_boost * loyalty_o * same_brand
                     + aisle_boost * same_aisle
                     - price_up * max(0, log price_ratio) - price_down * max(0, -log price_ratio)
                     - size_penalty * |log size_ratio|
                     + pickiness_o + quality_c + affinity_oc)

stored with every offer (``true_p``), so the best achievable AUC and rank of the accepted candidate
per event (the oracle) are known. The attribute terms are visible to a model through the request's
pair attributes (nonlinearly: dearer hurts more than cheaper, size in both directions); the
latent co-purchase affinity of a pair, a candidate's quality and an original's pickiness only
through their acceptance history: what the feature store's point-in-time rates estimate.

Scenarios shift the world for monitoring work: ``covariate_shift`` changes what runs out and what
is offered (long-tail products, candidates from other aisles); ``concept_drift`` changes what
customers accept (price matters twice as much, brand half as much, department habits redrawn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlsd.problems.synthetic import WindowParams, WorldParams, calibrate_intercept, rate_snapshots, sigmoid
from mlsd.spec import ProblemSpec
from mlsd.spec.schema import Duration

DEPTS = ["produce", "dairy", "bakery", "pantry", "frozen", "snacks", "beverages", "household"]
CALIBRATION_EVENTS = 20_000  # events drawn to set the intercept to the target acceptance rate
# Covariate shift: every product is as likely to run out, and cross-aisle substitutes are offered
# this many times as often as in the training data.
SHIFTED_CROSS_WEIGHT = 4.0


class GeneratorParams(WorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_events: int = Field(default=30_000, ge=500, description="out-of-stock events")
    candidates_per_event: int = Field(default=5, ge=2, le=20)
    days: int = Field(default=42, ge=7)
    target_acceptance: float = Field(default=0.3, gt=0, lt=0.9)
    mean_response_delay: Duration = timedelta(minutes=5)
    scenario: Literal["none", "covariate_shift", "concept_drift"] = "none"
    n_products: int = Field(default=2000, ge=100, le=5000)
    products_per_aisle: int = Field(default=50, ge=10)
    brands_per_aisle: int = Field(default=8, ge=2)
    substitutes: int = Field(default=12, ge=2, description="candidates the catalog lists per product")
    cross_aisle_share: float = Field(default=0.25, ge=0, le=1, description="of a product's substitutes")
    # Logit-scale size of each driver of acceptance.
    brand_boost: float = 1.0
    loyalty_sd: float = Field(default=0.8, ge=0, description="log-sd of the original's brand loyalty")
    aisle_boost: float = 0.8
    price_up: float = Field(default=3.5, ge=0, description="per unit of log price ratio above 1")
    price_down: float = Field(default=0.4, ge=0, description="per unit of log price ratio below 1")
    size_penalty: float = Field(default=2.0, ge=0)
    dept_sd: float = Field(default=0.4, ge=0)
    original_sd: float = Field(default=0.4, ge=0)
    candidate_sd: float = Field(default=0.5, ge=0)
    affinity_sd: float = Field(default=0.8, ge=0)

    @model_validator(mode="after")
    def _check_catalog(self) -> GeneratorParams:
        if self.substitutes >= self.products_per_aisle:
            raise ValueError(
                f"substitutes ({self.substitutes}) must be fewer than products_per_aisle "
                f"({self.products_per_aisle}); raise products_per_aisle or list fewer substitutes"
            )
        if self.candidates_per_event > self.substitutes:
            raise ValueError(
                f"candidates_per_event ({self.candidates_per_event}) cannot exceed substitutes "
                f"({self.substitutes}): an event offers candidates from the product's list"
            )
        return self

    def start_time(self) -> pd.Timestamp:
        return self.end_time() - timedelta(days=self.days)


class FeatureParams(BaseModel):
    """conf/base/parameters_problem.yml ``features:`` block."""

    model_config = ConfigDict(extra="forbid")

    pair: WindowParams = WindowParams(every=timedelta(days=1), windows=["28d"])
    candidate: WindowParams = WindowParams(every=timedelta(days=1), windows=["7d", "28d"])
    original: WindowParams = WindowParams(every=timedelta(days=1), windows=["28d"])
    prior_rate: float = Field(default=0.3, gt=0, lt=1)
    prior_weight: float = Field(default=10.0, ge=0)


# Feature table -> (join keys, field prefix, which FeatureParams windows it uses).
RATE_TABLES = {
    "pair_history": (["original_id", "candidate_id"], "pair", "pair"),
    "candidate_history": (["candidate_id"], "cand", "candidate"),
    "original_history": (["original_id"], "orig", "original"),
}


@dataclass(frozen=True)
class Offers:
    """Who was offered what: one entry per (event, candidate) (indices into the world's tables)."""

    event: np.ndarray
    original: np.ndarray
    slot: np.ndarray  # position of the candidate in the original's substitute list
    candidate: np.ndarray
    ts: pd.DatetimeIndex


@dataclass(frozen=True)
class ReplacementWorld:
    """The latent truth of one seeded world: the catalog, its substitute lists and what drives acceptance."""

    products: pd.DataFrame
    substitutes: np.ndarray  # (products, substitutes) product indices
    cross_aisle: np.ndarray  # (products, substitutes) bool: the substitute is from another aisle
    popularity: np.ndarray  # per product: how often it runs out
    loyalty: np.ndarray  # per product: how brand-loyal its buyers are
    pickiness: np.ndarray  # per product as the original
    quality: np.ndarray  # per product as the candidate
    affinity: np.ndarray  # (products, substitutes): latent co-purchase affinity of each pair
    dept_bias: np.ndarray
    params: GeneratorParams
    intercept: float = 0.0

    @classmethod
    def create(cls, p: GeneratorParams) -> ReplacementWorld:
        rng = np.random.default_rng(p.seed)
        products = _catalog(p, rng)
        substitutes, cross = _substitute_lists(p, rng, products)
        n = len(products)
        world = cls(
            products=products,
            substitutes=substitutes,
            cross_aisle=cross,
            popularity=rng.lognormal(0, 1.2, n),
            loyalty=rng.lognormal(0, p.loyalty_sd, n),
            pickiness=rng.normal(0, p.original_sd, n),
            quality=rng.normal(0, p.candidate_sd, n),
            affinity=rng.normal(0, p.affinity_sd, substitutes.shape),
            dept_bias=rng.normal(0, p.dept_sd, len(DEPTS)),
            params=p,
        )
        if p.scenario == "concept_drift":
            world = world.drifted()
        offers = world.draw(np.random.default_rng(p.seed + 1), min(p.n_events, CALIBRATION_EVENTS))
        intercept = calibrate_intercept(world.logit(offers), p.target_acceptance, -15.0, 15.0)
        return dataclasses.replace(world, intercept=intercept)

    def drifted(self) -> ReplacementWorld:
        """Concept drift: price matters twice as much, brand half as much, department habits redrawn."""
        rng = np.random.default_rng(self.params.seed + 2)
        p = self.params.model_copy(
            update={"price_up": self.params.price_up * 2, "brand_boost": self.params.brand_boost / 2}
        )
        return dataclasses.replace(self, dept_bias=rng.normal(0, p.dept_sd, len(DEPTS)), params=p)

    def draw(
        self,
        rng: np.random.Generator,
        n_events: int,
        span: tuple[pd.Timestamp, pd.Timestamp] | None = None,
        *,
        popularity: np.ndarray | None = None,
        cross_weight: float = 1.0,
    ) -> Offers:
        """``n_events`` out-of-stock events within ``span`` (default: the data's days), each offering
        ``candidates_per_event`` distinct substitutes from the original's list.

        ``popularity`` weighs which products run out; ``cross_weight`` how much more likely a
        cross-aisle substitute is offered than a same-aisle one.
        """
        p = self.params
        start, end = span or (p.start_time(), p.end_time())
        weights = self.popularity if popularity is None else popularity
        original = rng.choice(len(self.products), n_events, p=weights / weights.sum())
        seconds = np.sort(rng.uniform(0, (end - start).total_seconds(), n_events))
        # Weighted sampling of slots without replacement (Gumbel top-k on log weights).
        slot_weight = np.where(self.cross_aisle[original], cross_weight, 1.0)
        keys = np.log(slot_weight) + rng.gumbel(size=slot_weight.shape)
        slots = np.argsort(-keys, axis=1)[:, : p.candidates_per_event]
        event = np.repeat(np.arange(n_events), p.candidates_per_event)
        original_rows = original[event]
        slot = slots.ravel()
        return Offers(
            event=event,
            original=original_rows,
            slot=slot,
            candidate=self.substitutes[original_rows, slot],
            ts=start + pd.to_timedelta(seconds[event], unit="s"),
        )

    def logit(self, o: Offers) -> np.ndarray:
        """The true log-odds that each offer is accepted, intercept included."""
        p = self.params
        attrs = pair_attributes(self.products, o.original, o.candidate)
        log_price = np.log(attrs["price_ratio"])
        dept = pd.Categorical(self.products["dept"].to_numpy()[o.original], categories=DEPTS).codes
        return (
            self.intercept
            + self.dept_bias[dept]
            + p.brand_boost * self.loyalty[o.original] * attrs["same_brand"]
            + p.aisle_boost * attrs["same_aisle"]
            - p.price_up * np.maximum(log_price, 0.0)
            - p.price_down * np.maximum(-log_price, 0.0)
            - p.size_penalty * np.abs(np.log(attrs["size_ratio"]))
            + self.pickiness[o.original]
            + self.quality[o.candidate]
            + self.affinity[o.original, o.slot]
        )


def _catalog(p: GeneratorParams, rng: np.random.Generator) -> pd.DataFrame:
    """Products in aisles of ``products_per_aisle``; each aisle has its own brands, and a typical
    size and price level near its department's (cross-aisle substitutes stay comparable); a
    product's price grows with its size and its brand's premium."""
    n_aisles = max(1, p.n_products // p.products_per_aisle)
    n = n_aisles * p.products_per_aisle
    aisle = np.repeat(np.arange(n_aisles), p.products_per_aisle)
    dept = np.arange(n_aisles) % len(DEPTS)
    brand_in_aisle = rng.integers(0, p.brands_per_aisle, n)
    premium = rng.lognormal(0, 0.3, (n_aisles, p.brands_per_aisle))[aisle, brand_in_aisle]
    aisle_size = rng.lognormal(np.log(500), 0.8, len(DEPTS))[dept] * rng.lognormal(0, 0.3, n_aisles)
    size = aisle_size[aisle] * rng.lognormal(0, 0.4, n)
    unit_price = (rng.lognormal(np.log(0.01), 0.6, len(DEPTS))[dept] * rng.lognormal(0, 0.2, n_aisles))[aisle]
    price = unit_price * size**0.8 * premium * rng.lognormal(0, 0.1, n)
    start = p.start_time()
    return pd.DataFrame(
        {
            "product_id": np.arange(1, n + 1, dtype="int64"),
            "brand_id": (aisle * p.brands_per_aisle + brand_in_aisle + 1).astype("int64"),
            "size": np.round(size, 1).clip(1.0),
            "aisle_id": (aisle + 1).astype("int64"),
            "dept": np.array(DEPTS)[dept[aisle]],
            "price": np.round(price, 2).clip(0.1),
            "created_ts": start - pd.to_timedelta(rng.uniform(30, 720, n), unit="D"),
        }
    )


def _substitute_lists(
    p: GeneratorParams, rng: np.random.Generator, products: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Each product's substitutes: ``substitutes`` random products, ``cross_aisle_share`` of them
    from other aisles of its department (the rest from its own aisle), never itself.

    Returns:
        ``(substitutes, cross_aisle)``, both of shape (products, substitutes).
    """
    aisle = products["aisle_id"].to_numpy()
    dept = products["dept"].to_numpy()
    n = len(products)
    n_cross = round(p.substitutes * p.cross_aisle_share)
    same = aisle[:, None] == aisle[None, :]
    other = (dept[:, None] == dept[None, :]) & ~same
    n_cross = min(n_cross, int(other.sum(axis=1).min()))  # a department of one aisle has no others
    noise = rng.gumbel(size=(n, n))
    noise[np.arange(n), np.arange(n)] = -np.inf
    near = np.argsort(-np.where(same, noise, -np.inf), axis=1)[:, : p.substitutes - n_cross]
    far = np.argsort(-np.where(other, noise, -np.inf), axis=1)[:, :n_cross]
    cross = np.c_[np.zeros(near.shape, dtype=bool), np.ones(far.shape, dtype=bool)]
    return np.c_[near, far], cross


def pair_attributes(
    products: pd.DataFrame, original: np.ndarray, candidate: np.ndarray
) -> dict[str, np.ndarray]:
    """What the caller knows about each (original, candidate) pair from the catalog: the request's
    context (same brand and aisle as 0/1, candidate / original price and size)."""
    brand = products["brand_id"].to_numpy()
    aisle = products["aisle_id"].to_numpy()
    price = products["price"].to_numpy()
    size = products["size"].to_numpy()
    return {
        "same_brand": (brand[original] == brand[candidate]).astype("int64"),
        "same_aisle": (aisle[original] == aisle[candidate]).astype("int64"),
        "price_ratio": price[candidate] / price[original],
        "size_ratio": size[candidate] / size[original],
    }


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables products, offers (with ``true_p``) and acceptances."""
    p = GeneratorParams.model_validate(dict(params))
    world = ReplacementWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    shifted = p.scenario == "covariate_shift"
    offers = world.draw(
        rng,
        p.n_events,
        popularity=np.ones(len(world.products)) if shifted else None,
        cross_weight=SHIFTED_CROSS_WEIGHT if shifted else 1.0,
    )
    true_p = sigmoid(world.logit(offers))
    accepted = rng.random(len(true_p)) < true_p
    delay = rng.exponential(p.mean_response_delay.total_seconds(), len(true_p))
    ids = world.products["product_id"].to_numpy()
    table = pd.DataFrame(
        {
            "offer_id": np.arange(1, len(true_p) + 1, dtype="int64"),
            "event_id": offers.event.astype("int64") + 1,
            "original_id": ids[offers.original],
            "candidate_id": ids[offers.candidate],
            "ts": offers.ts,
            "true_p": true_p,
        }
    )
    acceptances = pd.DataFrame(
        {
            "offer_id": table["offer_id"].to_numpy()[accepted],
            "accepted_ts": offers.ts[accepted] + pd.to_timedelta(delay[accepted], unit="s"),
        }
    )
    return {"products": world.products, "offers": table, "acceptances": acceptances}


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Labelled offers: the pair's catalog attributes, ``accepted`` (0/1) and ``accepted_ts``."""
    products = raw["products"].reset_index(drop=True)
    row = pd.Series(np.arange(len(products)), index=products["product_id"].to_numpy())
    events = raw["offers"].copy()
    original = row.loc[events["original_id"]].to_numpy()
    candidate = row.loc[events["candidate_id"]].to_numpy()
    for name, values in pair_attributes(products, original, candidate).items():
        events[name] = values
    events = events.merge(raw["acceptances"], on="offer_id", how="left")
    events["accepted"] = events["accepted_ts"].notna().astype("int64")
    return events[list(spec.tables[spec.events_table].columns)]


def build_feature_tables(
    spec: ProblemSpec,
    raw: Mapping[str, pd.DataFrame],
    events: pd.DataFrame,
    params: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """original_product (the original's department), and acceptance-rate snapshots per
    (original, candidate) pair, per candidate and per original (the collaborative signal, point in
    time: :func:`mlsd.problems.synthetic.rate_snapshots`)."""
    f = FeatureParams.model_validate(dict(params))
    products = raw["products"]
    tables = {
        "original_product": pd.DataFrame(
            {
                "original_id": products["product_id"],
                "orig_dept": products["dept"],
                "event_timestamp": products["created_ts"],
            }
        )
    }
    for source, (keys, prefix, group) in RATE_TABLES.items():
        names = (f"{prefix}_offers", f"{prefix}_accept_rate")
        prior = (f.prior_rate, f.prior_weight)
        tables[source] = rate_snapshots(events, keys, "accepted_ts", getattr(f, group), names, prior)
    return tables


SimulationScenario = Literal["none", "covariate_shift", "concept_drift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` candidate-scoring requests from the world the pipeline's data came from, and their
    true P(accept).

    The world (catalog, substitute lists, latent drivers, intercept) is the one ``generate`` built
    with the same ``params``; events fall in the data's last day. Each request is one (original,
    candidate) pair with its catalog attributes; consecutive requests are one event's candidates.

    - ``none``: traffic as in the training data.
    - ``covariate_shift``: every product runs out as often (long-tail originals without history)
      and cross-aisle substitutes are offered 4x as often (``same_aisle`` and the rates shift).
    - ``concept_drift``: same traffic; price matters twice as much, brand half as much and
      department habits are redrawn (inputs unchanged; their relation to acceptance is not).
    - ``new_entities``: every candidate is a new product (no stored history; its own quality and
      affinities), listed with the attributes of the one it replaces in the catalog.
    """
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world = ReplacementWorld.create(p)
    rng = np.random.default_rng(seed)
    span = (p.end_time() - timedelta(days=1), p.end_time())
    n_events = -(-n // p.candidates_per_event)
    ids = world.products["product_id"].to_numpy()
    candidate_ids = ids
    truth = world
    if scenario == "covariate_shift":
        offers = world.draw(
            rng, n_events, span, popularity=np.ones(len(ids)), cross_weight=SHIFTED_CROSS_WEIGHT
        )
    else:
        offers = world.draw(rng, n_events, span)
        if scenario == "concept_drift":
            truth = world.drifted()
        elif scenario == "new_entities":
            candidate_ids = int(ids.max()) + 1 + np.arange(len(ids))
            truth = dataclasses.replace(
                world,
                quality=rng.normal(0, p.candidate_sd, len(ids)),
                affinity=rng.normal(0, p.affinity_sd, world.affinity.shape),
            )
    offers = Offers(*(getattr(offers, f.name)[:n] for f in dataclasses.fields(Offers)))
    attrs = pair_attributes(world.products, offers.original, offers.candidate)
    requests = [
        {
            "original_id": int(o),
            "candidate_id": int(c),
            "same_brand": int(b),
            "same_aisle": int(a),
            "price_ratio": float(pr),
            "size_ratio": float(sr),
        }
        for o, c, b, a, pr, sr in zip(
            ids[offers.original],
            candidate_ids[offers.candidate],
            attrs["same_brand"],
            attrs["same_aisle"],
            attrs["price_ratio"],
            attrs["size_ratio"],
            strict=True,
        )
    ]
    return requests, sigmoid(truth.logit(offers))
