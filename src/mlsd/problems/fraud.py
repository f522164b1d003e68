"""Card fraud detection: a synthetic payments world with a known fraud probability, and its features.

The world: cardholders pay at merchants from their own one or two devices, in amounts around their
own typical amount, mostly in their home country. Fraud rings hold a few devices each; a card the
ring has compromised is used from a ring device in a burst (several payments within hours), for
larger amounts, at riskier merchant categories, often abroad. Each transaction's ``true_p`` =
sigmoid(intercept + ring + amount ratio + abroad + category risk + night) is stored, and the label
is drawn from it, so the best achievable PR-AUC (the oracle) is known. What a model can see of the
latent ring: devices shared by many cards (``device_cards_7d``), velocity (``card_txns_1h``),
the amount against the card's history, the country against the card's home.

Chargebacks (the labels) arrive days after the payment: every fraud is charged back within
``chargeback_delay_max``; a merchant's fraud-rate feature counts only chargebacks already received.
Scenarios for monitoring: ``covariate_shift`` (more foreign and larger payments),
``concept_drift`` (rings move to other categories and smaller amounts).
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

COUNTRIES = ["US", "GB", "DE", "IN", "BR"]
MAX_CENTS = 5_000_000  # 50,000.00: under 2**23, so every k + 0.5 is exact in float32
CATEGORIES = ["grocery", "fuel", "restaurants", "travel", "electronics", "gaming", "online_services"]
# Log-odds of fraud by category (rings cash out where goods resell), and again after concept drift.
CATEGORY_RISK = np.array([-0.8, -0.6, -0.4, 0.3, 1.0, 1.0, 0.8])
DRIFTED_RISK = np.array([0.8, 0.6, 0.4, 0.3, -0.6, -0.6, 0.0])


class GeneratorParams(WorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_transactions: int = Field(default=200_000, ge=2_000)
    days: int = Field(default=14, ge=3)
    target_fraud_rate: float = Field(default=0.005, gt=0, lt=0.2)
    transactions_per_card: int = Field(default=25, ge=2, description="sets the number of cards")
    ring_share: float = Field(default=0.006, gt=0, lt=0.5, description="share of payments a ring makes")
    n_rings: int = Field(default=3, ge=1)
    devices_per_ring: int = Field(default=2, ge=1)
    burst_size: int = Field(default=5, ge=1, description="payments per compromised card")
    chargeback_delay_max: Duration = timedelta(days=10)
    scenario: Literal["none", "covariate_shift", "concept_drift"] = "none"


class FeatureParams(BaseModel):
    """conf/base/parameters_problem.yml ``features:`` block."""

    model_config = ConfigDict(extra="forbid")

    velocity_every: Duration = timedelta(hours=1)
    profile_every: Duration = timedelta(days=1)
    sharing_window_days: int = Field(default=7, ge=1)
    prior_fraud_rate: float = Field(default=0.005, gt=0, lt=1)
    prior_weight: float = Field(default=200.0, ge=0)


@dataclass(frozen=True)
class FraudWorld:
    """The latent truth of one seeded world: cards, merchants, devices and who is a ring."""

    cards: pd.DataFrame
    merchants: pd.DataFrame
    card_devices: np.ndarray  # [n_cards, 2] each card's own devices
    ring_devices: np.ndarray  # [n_rings, devices_per_ring]
    typical_amount: np.ndarray  # per card
    category_risk: np.ndarray

    @classmethod
    def create(cls, p: GeneratorParams) -> FraudWorld:
        rng = np.random.default_rng(p.seed)
        n_cards = max(100, p.n_transactions // p.transactions_per_card)
        n_merchants = max(50, n_cards // 20)
        start = p.end_time() - timedelta(days=p.days)
        cards = pd.DataFrame(
            {
                "card_id": np.arange(1, n_cards + 1, dtype="int64"),
                "home_country": rng.choice(COUNTRIES, n_cards, p=[0.4, 0.15, 0.15, 0.2, 0.1]),
                "issued_ts": start - pd.to_timedelta(rng.uniform(30, 1500, n_cards), unit="D"),
            }
        )
        merchants = pd.DataFrame(
            {
                "merchant_id": np.arange(1, n_merchants + 1, dtype="int64"),
                "category": rng.choice(CATEGORIES, n_merchants, p=[0.25, 0.15, 0.2, 0.1, 0.1, 0.1, 0.1]),
                "country": rng.choice(COUNTRIES, n_merchants),
            }
        )
        card_devices = np.arange(1, 2 * n_cards + 1, dtype="int64").reshape(n_cards, 2)
        first_ring = 2 * n_cards + 1
        ring_devices = first_ring + np.arange(p.n_rings * p.devices_per_ring, dtype="int64").reshape(
            p.n_rings, p.devices_per_ring
        )
        typical = rng.lognormal(3.3, 0.6, n_cards)  # ~27 currency units, heavy-tailed
        risk = DRIFTED_RISK if p.scenario == "concept_drift" else CATEGORY_RISK
        return cls(cards, merchants, card_devices, ring_devices, typical, risk)


def _logit(
    world: FraudWorld, card_idx: np.ndarray, merchant_idx: np.ndarray, cents: np.ndarray,
    country: np.ndarray, hour: np.ndarray, ring: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """The true log-odds of fraud without the intercept: what the generator knows about a payment."""
    category = pd.Categorical(world.merchants["category"].to_numpy()[merchant_idx], CATEGORIES).codes
    abroad = country != world.cards["home_country"].to_numpy()[card_idx]
    night = (hour < 6).astype(float)
    ratio = np.log(cents / 100 / world.typical_amount[card_idx])
    return (
        6.0 * ring + 0.6 * np.clip(ratio, -2, 4) + 0.9 * abroad + world.category_risk[category] + 0.5 * night
    )


@dataclass(frozen=True)
class Payments:
    """n payments: who paid where, from which device, how much, when (seconds from the start)."""

    card_idx: np.ndarray
    merchant_idx: np.ndarray
    device_id: np.ndarray
    amount_cents: np.ndarray
    country: np.ndarray
    hour: np.ndarray
    offset_s: np.ndarray
    ring: np.ndarray


def _draw(world: FraudWorld, p: GeneratorParams, rng: np.random.Generator, n: int, shifted: bool) -> Payments:
    """Normal payments plus ring bursts on compromised cards, in time order."""
    n_cards, n_merchants = len(world.cards), len(world.merchants)
    n_ring = round(n * p.ring_share)
    n_normal = n - n_ring
    card = rng.integers(0, n_cards, n_normal)
    device = world.card_devices[card, rng.integers(0, 2, n_normal)]
    amount = world.typical_amount[card] * rng.lognormal(0, 0.5 if not shifted else 0.8, n_normal)
    home = world.cards["home_country"].to_numpy()[card]
    abroad = rng.random(n_normal) < (0.05 if not shifted else 0.2)
    country = np.where(abroad, rng.choice(COUNTRIES, n_normal), home)
    hour_p = 1 + 0.8 * np.sin(2 * np.pi * (np.arange(24) - 9) / 24)
    hour = rng.choice(24, n_normal, p=hour_p / hour_p.sum())
    day = rng.integers(0, p.days, n_normal)
    offset = day * 86400 + hour * 3600 + rng.integers(0, 3600, n_normal)
    # Bursts: a compromised card, one ring's devices, payments minutes apart, any hour.
    bursts = -(-n_ring // p.burst_size)
    victim = rng.integers(0, n_cards, bursts)
    ring_of = rng.integers(0, len(world.ring_devices), bursts)
    begin = rng.integers(0, p.days * 86400 - 6 * 3600, bursts)
    r_card = np.repeat(victim, p.burst_size)[:n_ring]
    r_device = world.ring_devices[
        np.repeat(ring_of, p.burst_size)[:n_ring], rng.integers(0, p.devices_per_ring, n_ring)
    ]
    r_offset = np.repeat(begin, p.burst_size)[:n_ring] + rng.integers(0, 4 * 3600, n_ring)
    r_amount = world.typical_amount[r_card] * rng.lognormal(1.0, 0.6, n_ring)
    r_country = np.where(
        rng.random(n_ring) < 0.5,
        rng.choice(COUNTRIES, n_ring),
        world.cards["home_country"].to_numpy()[r_card],
    )
    risky = np.flatnonzero(
        world.merchants["category"].isin(["electronics", "gaming", "online_services", "travel"])
    )
    r_merchant = rng.choice(risky if len(risky) else np.arange(n_merchants), n_ring)
    offsets = np.r_[offset, r_offset]
    order = np.argsort(offsets, kind="stable")
    merchant = np.r_[rng.integers(0, n_merchants, n_normal), r_merchant]
    return Payments(
        card_idx=np.r_[card, r_card][order],
        merchant_idx=merchant[order],
        device_id=np.r_[device, r_device][order],
        amount_cents=np.clip(np.round(np.r_[amount, r_amount] * 100), 1, MAX_CENTS).astype("int64")[order],
        country=np.r_[country, r_country][order],
        hour=((offsets // 3600) % 24)[order].astype("int64"),
        offset_s=offsets[order],
        ring=np.r_[np.zeros(n_normal), np.ones(n_ring)][order],
    )


def _world_and_intercept(p: GeneratorParams) -> tuple[FraudWorld, Payments, float, np.random.Generator]:
    """The world, the training data's payments and the intercept, from ``generate``'s stream."""
    world = FraudWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    pay = _draw(world, p, rng, p.n_transactions, p.scenario == "covariate_shift")
    logit = _logit(world, pay.card_idx, pay.merchant_idx, pay.amount_cents, pay.country, pay.hour, pay.ring)
    return world, pay, calibrate_intercept(logit, p.target_fraud_rate), rng


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables cards, merchants, transactions (with ``true_p``) and chargebacks."""
    p = GeneratorParams.model_validate(dict(params))
    world, pay, intercept, rng = _world_and_intercept(p)
    logit = _logit(world, pay.card_idx, pay.merchant_idx, pay.amount_cents, pay.country, pay.hour, pay.ring)
    true_p = sigmoid(logit + intercept)
    fraud = rng.random(len(true_p)) < true_p
    ts = p.end_time() - timedelta(days=p.days) + pd.to_timedelta(pay.offset_s, unit="s")
    transactions = pd.DataFrame(
        {
            "txn_id": np.arange(1, len(true_p) + 1, dtype="int64"),
            "card_id": world.cards["card_id"].to_numpy()[pay.card_idx],
            "merchant_id": world.merchants["merchant_id"].to_numpy()[pay.merchant_idx],
            "device_id": pay.device_id.astype("int64"),
            "amount_cents": pay.amount_cents,
            "country": pay.country.astype(str),
            "ts": ts,
            "hour": pay.hour,
            "true_p": true_p,
        }
    )
    delay = rng.uniform(1, p.chargeback_delay_max.total_seconds() / 86400, int(fraud.sum()))
    charged = transactions.loc[fraud, ["txn_id", "ts"]].reset_index(drop=True)
    chargebacks = pd.DataFrame(
        {"txn_id": charged["txn_id"], "chargeback_ts": charged["ts"] + pd.to_timedelta(delay, unit="D")}
    )
    return {
        "cards": world.cards,
        "merchants": world.merchants,
        "transactions": transactions,
        "chargebacks": chargebacks,
    }


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Labelled payments: the merchant's category, ``is_fraud`` (charged back) and the delay."""
    txns = raw["transactions"].merge(
        raw["merchants"][["merchant_id", "category"]], on="merchant_id", how="left"
    )
    events = txns.merge(raw["chargebacks"], on="txn_id", how="left")
    events["is_fraud"] = events["chargeback_ts"].notna().astype("int64")
    events["chargeback_delay_d"] = (events["chargeback_ts"] - events["ts"]).dt.total_seconds() / 86400
    return events[list(spec.tables[spec.events_table].columns)]


def _card_amount_history(events: pd.DataFrame, every: timedelta) -> pd.DataFrame:
    """Per card and snapshot: how many payments and their mean amount (cents) strictly before it.

    Amounts are whole cents: tree split thresholds between integers (k + 0.5) are exact in the
    ONNX graph's float32, so the exported model agrees with the native one to the last bit.
    """
    origin = events["ts"].min().floor(pd.Timedelta(every))
    period = ((events["ts"] - origin) // pd.Timedelta(every)).astype("int64")
    grouped = (
        pd.DataFrame({"card_id": events["card_id"], "period": period, "cents": events["amount_cents"]})
        .groupby(["card_id", "period"], sort=True)
        .agg(n=("cents", "size"), total=("cents", "sum"))
        .groupby(level="card_id")
        .cumsum()
        .reset_index()
    )
    # Totals through period k are known from the start of period k + 1.
    return pd.DataFrame(
        {
            "card_id": grouped["card_id"],
            "event_timestamp": origin + (grouped["period"] + 1) * pd.Timedelta(every),
            "card_txns_total": grouped["n"].astype("int64"),
            "card_mean_cents": (grouped["total"] / grouped["n"]).round().astype("int64"),
        }
    )


def _device_sharing(events: pd.DataFrame, every: timedelta, window_days: int) -> pd.DataFrame:
    """Per device and daily snapshot: distinct cards that used it in the trailing window."""
    origin = events["ts"].min().floor(pd.Timedelta(every))
    period = ((events["ts"] - origin) // pd.Timedelta(every)).astype("int64")
    seen = pd.DataFrame({"device_id": events["device_id"], "card_id": events["card_id"], "period": period})
    seen = seen.drop_duplicates()
    spans = [seen.assign(snapshot=seen["period"] + k) for k in range(1, window_days + 1)]
    counts = pd.concat(spans).groupby(["device_id", "snapshot"])["card_id"].nunique().reset_index()
    return pd.DataFrame(
        {
            "device_id": counts["device_id"],
            "event_timestamp": origin + counts["snapshot"] * pd.Timedelta(every),
            "device_cards_7d": counts["card_id"].astype("int64"),
        }
    )


def build_feature_tables(
    spec: ProblemSpec, raw: Mapping[str, pd.DataFrame], events: pd.DataFrame, params: Mapping[str, Any]
) -> dict[str, pd.DataFrame]:
    """card_profile, card_velocity (hourly), card_amounts, device_sharing and merchant_risk (daily)."""
    f = FeatureParams.model_validate(dict(params))
    cards = raw["cards"]
    # One trailing hour, snapshotted hourly (the view's ttl is 1h: no recent payment reads as 0).
    velocity = rolling_counts(
        events, ["card_id"], "ts", "chargeback_ts", {"1h": f.velocity_every}, f.velocity_every
    )
    merchant = rolling_counts(
        events, ["merchant_id"], "ts", "chargeback_ts", {"7d": timedelta(days=7)}, f.profile_every
    )
    return {
        "card_profile": cards[["card_id", "home_country"]].assign(event_timestamp=cards["issued_ts"]),
        "card_velocity": velocity[["card_id", "event_timestamp"]].assign(card_txns_1h=velocity["n_1h"]),
        "card_amounts": _card_amount_history(events, f.profile_every),
        "device_sharing": _device_sharing(events, f.profile_every, f.sharing_window_days),
        "merchant_risk": merchant[["merchant_id", "event_timestamp"]].assign(
            merchant_txns_7d=merchant["n_7d"],
            merchant_fraud_rate_7d=smoothed_rate(
                merchant["k_7d"], merchant["n_7d"], f.prior_fraud_rate, f.prior_weight
            ).astype("float32"),
        ),
    }


SimulationScenario = Literal["none", "covariate_shift", "concept_drift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` online payment requests from the world the pipeline's data came from, and their true
    P(fraud). ``new_entities``: every card is new to the store (its stored features are missing)."""
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world, _, intercept, _ = _world_and_intercept(p)
    truth = (
        FraudWorld.create(p.model_copy(update={"scenario": "concept_drift"}))
        if scenario == "concept_drift"
        else world
    )
    pay = _draw(world, p, np.random.default_rng(seed), n, scenario == "covariate_shift")
    logit = _logit(truth, pay.card_idx, pay.merchant_idx, pay.amount_cents, pay.country, pay.hour, pay.ring)
    card_ids = world.cards["card_id"].to_numpy()[pay.card_idx]
    if scenario == "new_entities":
        card_ids = int(world.cards["card_id"].max()) + 1 + np.arange(n)
    merchants = world.merchants.iloc[pay.merchant_idx]
    requests = [
        {"card_id": int(c), "device_id": int(d), "merchant_id": int(m), "category": str(cat),
         "amount_cents": int(a), "country": str(co), "hour": int(h)}
        for c, d, m, cat, a, co, h in zip(
            card_ids, pay.device_id, merchants["merchant_id"], merchants["category"], pay.amount_cents,
            pay.country, pay.hour, strict=True,
        )
    ]  # fmt: skip
    return requests, sigmoid(logit + intercept)
