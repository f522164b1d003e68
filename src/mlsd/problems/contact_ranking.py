"""Contact ranking: whom a user writes to next, in a synthetic mailbox with known, drifting rates.

The world: each user has an address book of contacts (some added while the data runs). The user
writes to contact ``c`` on day ``d`` at the rate

    rate_out[u, c, d] = activity_u * softmax_c(base_uc + drift_uc[d] + new_boost * added_late_uc)

and hears from ``c`` at ``reply_ratio * rate_out * exp(in_noise_uc)``. ``drift`` is a daily
Ornstein-Uhlenbeck walk (stationary sd ``drift_sd``, autocorrelation half-life
``drift_half_life``), so who a user writes to changes over weeks and recent messages say more
than old ones: the reason for recency-decayed counts. One event is one outgoing email: its
candidates are the user's contacts at that time, its positive is the recipient, and each
candidate's truth ``true_p`` is its share of the user's current outgoing rate (the oracle ranks
by the true current rates, the best any model can do). Rates are per day; the truth table
``contact_rates`` holds them and is never a feature.

Features are decayed counts (mlsd.features.decay) of outgoing and incoming messages per
(user, contact) over several half-lives, snapshotted daily from messages strictly before each
snapshot. The Interactions Rank baseline (Roth et al. 2010: decayed counts, outgoing weighted)
is a model family of this module (:func:`interactions_rank_family`), named in the spec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from mlsd.errors import SpecError
from mlsd.features.decay import decayed_counts
from mlsd.problems.synthetic import WorldParams
from mlsd.spec import ModelInput, ProblemSpec
from mlsd.spec.schema import Duration, parse_duration
from mlsd.training.families import Family

MAX_DAYS_SINCE = 365.0  # "never": the spec's default of days_since_last
PAIR = ["user_id", "contact_id"]


class GeneratorParams(WorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_users: int = Field(default=300, ge=10)
    contacts_per_user: int = Field(default=20, ge=3, description="mean address book size")
    days: int = Field(default=35, ge=6)
    warmup_days: int = Field(default=14, ge=1, description="history before the first event")
    sends_per_day: float = Field(default=2.0, gt=0, description="mean outgoing emails per user and day")
    reply_ratio: float = Field(default=0.8, ge=0, description="incoming per outgoing, on average")
    in_noise_sd: float = Field(default=0.7, ge=0, description="how unevenly contacts write back")
    rate_sd: float = Field(default=1.5, ge=0, description="spread of contacts' base log-rates")
    drift_sd: float = Field(default=0.8, ge=0, description="stationary sd of the log-rate drift")
    drift_half_life: Duration = timedelta(days=14)
    new_contact_share: float = Field(default=0.3, ge=0, lt=1, description="contacts added during the data")
    new_contact_boost: float = Field(default=1.5, description="log-rate boost of a newly added contact")

    @field_validator("warmup_days")
    @classmethod
    def _warmup(cls, warmup: int, info: ValidationInfo) -> int:
        days = info.data.get("days", 35)
        if warmup > days - 5:
            raise ValueError(f"warmup_days ({warmup}) must leave at least 5 of the {days} days for events")
        return warmup

    def start_time(self) -> pd.Timestamp:
        return self.end_time() - timedelta(days=self.days)


class FeatureParams(BaseModel):
    """conf/base/parameters_problem.yml ``features:`` block; names become feature fields
    (``out_decay_7d``, ``user_out_decay_7d``), so they must match the spec's views."""

    model_config = ConfigDict(extra="forbid")

    every: Duration = timedelta(days=1)
    half_lives: list[str] = Field(default=["2d", "7d", "28d"], min_length=1)
    user_half_life: str = "7d"

    @field_validator("half_lives")
    @classmethod
    def _durations(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not isinstance(parse_duration(n), timedelta)]
        if bad:
            raise ValueError(f"{bad} are not durations like '7d' or '12h'")
        return names


@dataclass(frozen=True)
class ContactWorld:
    """The latent truth of one seeded world: address books and every pair's daily rates.

    Pairs are sorted by user, so each user's contacts are one block starting at ``blocks[u]``.
    """

    pair_user: np.ndarray  # user index per pair
    pair_contact: np.ndarray  # contact id per pair
    added_day: np.ndarray  # day the contact was added (negative: before the data)
    base: np.ndarray
    drift: np.ndarray  # (pairs, days)
    in_noise: np.ndarray
    activity: np.ndarray  # per user: outgoing emails per day
    blocks: np.ndarray
    params: GeneratorParams

    @classmethod
    def create(cls, p: GeneratorParams) -> ContactWorld:
        rng = np.random.default_rng(p.seed)
        sizes = rng.integers(max(3, p.contacts_per_user // 2), p.contacts_per_user * 3 // 2 + 1, p.n_users)
        pool = max(200, p.n_users * p.contacts_per_user // 4)  # colleagues are shared between users
        popularity = 1.0 / np.arange(1, pool + 1) ** 0.7
        contacts = [rng.choice(pool, size, replace=False, p=popularity / popularity.sum()) for size in sizes]
        n = int(sizes.sum())
        late = rng.random(n) < p.new_contact_share
        added = np.where(late, rng.integers(1, p.days, n), -rng.integers(30, 700, n))
        return cls(
            pair_user=np.repeat(np.arange(p.n_users), sizes),
            pair_contact=np.concatenate(contacts).astype("int64") + 100_001,
            added_day=added,
            base=rng.normal(0, p.rate_sd, n) + p.new_contact_boost * late,
            drift=_ou_paths(rng, n, p.days, p.drift_sd, p.drift_half_life / timedelta(days=1)),
            in_noise=rng.normal(-(p.in_noise_sd**2) / 2, p.in_noise_sd, n),
            activity=p.sends_per_day * rng.lognormal(-0.125, 0.5, p.n_users),
            blocks=np.r_[0, np.cumsum(sizes)[:-1]],
            params=p,
        )

    @property
    def user_ids(self) -> np.ndarray:
        return np.arange(1, self.params.n_users + 1, dtype="int64")

    def redrawn(self, seed: int) -> ContactWorld:
        """Concept drift: every pair's drift redrawn (a reorganisation: new projects, new teams)."""
        p = self.params
        rng = np.random.default_rng(seed)
        drift = _ou_paths(rng, len(self.base), p.days, p.drift_sd, p.drift_half_life / timedelta(days=1))
        return dataclasses.replace(self, drift=drift)

    def shares(self) -> np.ndarray:
        """(pairs, days): each contact's share of its user's outgoing emails that day (0 before it
        was added)."""
        days = np.arange(self.params.days)
        logit = self.base[:, None] + self.drift
        logit = np.where(self.added_day[:, None] <= days[None, :], logit, -np.inf)
        top = np.maximum.reduceat(logit, self.blocks, axis=0)[self.pair_user]
        weight = np.exp(logit - top)
        return weight / np.add.reduceat(weight, self.blocks, axis=0)[self.pair_user]


def _ou_paths(rng: np.random.Generator, n: int, days: int, sd: float, half_life_days: float) -> np.ndarray:
    """``n`` stationary Ornstein-Uhlenbeck paths of ``days`` daily steps (sd ``sd``)."""
    phi = 0.5 ** (1.0 / half_life_days)
    paths = np.empty((n, days))
    paths[:, 0] = rng.normal(0, sd, n)
    for d in range(1, days):
        paths[:, d] = phi * paths[:, d - 1] + np.sqrt(1 - phi**2) * rng.normal(0, sd, n)
    return paths


def _messages(world: ContactWorld, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Poisson messages per pair, day and direction at the world's rates; times uniform in the day."""
    p = world.params
    rate_out = world.shares() * world.activity[world.pair_user][:, None]
    rate_in = rate_out * p.reply_ratio * np.exp(world.in_noise)[:, None]
    frames = []
    for direction, rate in (("out", rate_out), ("in", rate_in)):
        counts = rng.poisson(rate)
        pair, day = np.nonzero(counts)
        reps = counts[pair, day]
        pair, day = np.repeat(pair, reps), np.repeat(day, reps)
        seconds = (day + rng.random(len(day))) * 86400.0
        frames.append(pd.DataFrame({"pair": pair, "seconds": seconds, "direction": direction}))
    both = pd.concat(frames).sort_values("seconds", kind="stable", ignore_index=True)
    msg_id = np.arange(1, len(both) + 1, dtype="int64")
    messages = pd.DataFrame(
        {
            "msg_id": msg_id,
            "user_id": world.user_ids[world.pair_user[both["pair"]]],
            "ts": p.start_time() + pd.to_timedelta(both["seconds"], unit="s"),
            "direction": both["direction"].to_numpy(),
        }
    )
    recipients = pd.DataFrame({"msg_id": msg_id, "contact_id": world.pair_contact[both["pair"]]})
    return messages, recipients


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables contacts (address books), messages, recipients and the truth, contact_rates."""
    p = GeneratorParams.model_validate(dict(params))
    world = ContactWorld.create(p)
    start = p.start_time()
    messages, recipients = _messages(world, np.random.default_rng(p.seed + 100))
    contacts = pd.DataFrame(
        {
            "user_id": world.user_ids[world.pair_user],
            "contact_id": world.pair_contact,
            "added_ts": start + pd.to_timedelta(world.added_day, unit="D"),
        }
    )
    # The truth on event days only (the days after the warm-up): what the oracle ranks by.
    shares = world.shares()[:, p.warmup_days :]
    rate = shares * world.activity[world.pair_user][:, None]
    pair, day = np.nonzero(shares > 0)
    rates = pd.DataFrame(
        {
            "user_id": contacts["user_id"].to_numpy()[pair],
            "contact_id": world.pair_contact[pair],
            "day": start + pd.to_timedelta(day + p.warmup_days, unit="D"),
            "true_rate": rate[pair, day],
        }
    )
    return {"contacts": contacts, "messages": messages, "recipients": recipients, "contact_rates": rates}


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One group per outgoing email after the warm-up (``msg_id``): a row per contact in the
    user's address book at that time, ``sent`` = 1 for the recipient, ``true_p`` its share of
    the user's current outgoing rate."""
    rates = raw["contact_rates"]
    sent = raw["messages"].loc[lambda m: (m["direction"] == "out") & (m["ts"] >= rates["day"].min())]
    sent = sent.merge(raw["recipients"].rename(columns={"contact_id": "recipient"}), on="msg_id")
    events = sent[["msg_id", "user_id", "ts", "recipient"]].merge(raw["contacts"], on="user_id")
    events = events.loc[events["added_ts"] <= events["ts"]]
    events = events.assign(day=events["ts"].dt.floor("D")).merge(
        rates, on=["user_id", "contact_id", "day"], how="left"
    )
    events["true_rate"] = events["true_rate"].fillna(0.0)
    events["true_p"] = events["true_rate"] / events.groupby("msg_id")["true_rate"].transform("sum")
    events["sent"] = (events["contact_id"] == events["recipient"]).astype("int64")
    events = events.sort_values(["ts", "contact_id"], kind="stable", ignore_index=True)
    return events[list(spec.tables[spec.events_table].columns)]


def build_feature_tables(
    spec: ProblemSpec,
    raw: Mapping[str, pd.DataFrame],
    events: pd.DataFrame,
    params: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """pair_interactions (decayed outgoing and incoming counts per half-life, days since the last
    message either way) and user_activity (the user's own decayed totals), daily snapshots from
    messages strictly before each snapshot."""
    f = FeatureParams.model_validate(dict(params))
    messages = raw["messages"].merge(raw["recipients"], on="msg_id")
    span = (messages["ts"].min().floor("D"), messages["ts"].max().ceil("D"))
    half_lives = {name: parse_duration(name) for name in f.half_lives}
    pair = _both_directions(messages, PAIR, half_lives, f.every, span, prefix="")
    book = _address_book(raw["contacts"], *span, f.every)
    pair = book.merge(pair, on=[*PAIR, "event_timestamp"], how="left")
    ages = pair[["out_age_s", "in_age_s"]].min(axis=1) / 86400.0
    pair = pair.drop(columns=["out_age_s", "in_age_s", "added_ts"]).fillna(0.0)
    pair["days_since_last"] = ages.fillna(MAX_DAYS_SINCE).clip(upper=MAX_DAYS_SINCE)
    user_half_life = {f.user_half_life: parse_duration(f.user_half_life)}
    user = _both_directions(messages, ["user_id"], user_half_life, f.every, span, prefix="user_")
    user = user.drop(columns=["out_age_s", "in_age_s"]).fillna(0.0)
    return {"pair_interactions": _float32(pair), "user_activity": _float32(user)}


def _both_directions(
    messages: pd.DataFrame,
    keys: list[str],
    half_lives: dict[str, timedelta],
    every: timedelta,
    span: tuple[pd.Timestamp, pd.Timestamp],
    prefix: str,
) -> pd.DataFrame:
    """Decayed counts of outgoing and incoming messages side by side: ``{prefix}out_decay_<h>``,
    ``{prefix}in_decay_<h>`` and ``out_age_s`` / ``in_age_s`` (NaN where one direction has none)."""
    parts = []
    for direction in ("out", "in"):
        part = decayed_counts(
            messages.loc[messages["direction"] == direction], keys, "ts", half_lives, every, *span
        )
        names = {f"decay_{n}": f"{prefix}{direction}_decay_{n}" for n in half_lives}
        parts.append(part.rename(columns={**names, "last_age_s": f"{direction}_age_s"}))
    return parts[0].merge(parts[1], on=[*keys, "event_timestamp"], how="outer")


def _address_book(
    contacts: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, every: timedelta
) -> pd.DataFrame:
    """One row per address-book entry and snapshot after it was added, with ``days_in_book``:
    a contact added last week is one the user is likely to write to, before any message says so."""
    snapshots = pd.DataFrame({"event_timestamp": pd.date_range(start + every, end, freq=every)})
    book = contacts.merge(snapshots, how="cross")
    book = book.loc[book["added_ts"] <= book["event_timestamp"]]
    days = (book["event_timestamp"] - book["added_ts"]).dt.total_seconds() / 86400.0
    return book.assign(days_in_book=days.clip(upper=MAX_DAYS_SINCE)).reset_index(drop=True)


def _float32(table: pd.DataFrame) -> pd.DataFrame:
    fields = [c for c in table.columns if table[c].dtype == "float64"]
    return table.astype(dict.fromkeys(fields, "float32"))


# --- the Interactions Rank baseline ---------------------------------------------------------------


class InteractionsRank(ClassifierMixin, BaseEstimator):
    """Roth et al.'s Interactions Rank: ``out_weight * outgoing + incoming`` decayed counts.

    The ranking is the heuristic's alone; ``fit`` only maps ``log1p(score)`` to a probability
    with a one-feature logistic regression (monotone, so every rank metric is the heuristic's),
    which makes its log loss comparable with the model's.

    Args:
        out_column: the decayed count of outgoing messages.
        in_column: the decayed count of incoming messages.
        out_weight: how much more an email the user sent counts than one received.
    """

    def __init__(
        self, out_column: str = "out_decay_7d", in_column: str = "in_decay_7d", out_weight: float = 2.0
    ):
        self.out_column = out_column
        self.in_column = in_column
        self.out_weight = out_weight

    def rank_score(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        """The Interactions Rank of each row."""
        lacking = [c for c in (self.out_column, self.in_column) if c not in X]
        if lacking:
            raise SpecError(f"interactions rank: inputs {lacking} are not model inputs; name them in params")
        return np.asarray(self.out_weight * X[self.out_column] + X[self.in_column], dtype="float64")

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> InteractionsRank:  # noqa: N803
        self.link_ = LogisticRegression().fit(np.log1p(self.rank_score(X))[:, None], y)
        self.classes_ = self.link_.classes_
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        check_is_fitted(self, "link_")
        proba: np.ndarray = self.link_.predict_proba(np.log1p(self.rank_score(X))[:, None])
        return proba


def _interactions_rank(inputs: list[ModelInput], params: Mapping[str, Any], seed: int, threads: int) -> Any:
    """``params``: ``half_life`` (which decayed counts, e.g. ``7d``) and ``out_weight``."""
    half_life = str(params.get("half_life", "7d"))
    return InteractionsRank(
        out_column=f"out_decay_{half_life}",
        in_column=f"in_decay_{half_life}",
        out_weight=float(params.get("out_weight", 2.0)),
    )


def interactions_rank_family() -> Family:
    """The baseline family the spec names as ``mlsd.problems.contact_ranking:interactions_rank_family``."""
    return Family(_interactions_rank)


# --- simulated traffic -----------------------------------------------------------------------------

SimulationScenario = Literal["none", "covariate_shift", "concept_drift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` keystroke scorings (one (user, contact) candidate each) on the data's last day, and
    each candidate's true share of its user's outgoing email.

    - ``none``: busy users type more; a keystroke's candidates are any of the user's contacts.
    - ``covariate_shift``: the typed prefixes match rarely used contacts (candidates drawn against
      their share): the decayed counts shift down, the truth per candidate does not change.
    - ``concept_drift``: the same requests; every pair's drift is redrawn (a reorganisation), so
      the stored history says less about whom the user writes to now.
    - ``new_entities``: new users (no history, no stored features) with their own address books.
    """
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world = ContactWorld.create(p)
    rng = np.random.default_rng(seed)
    shares = world.shares()[:, -1]
    users = rng.choice(p.n_users, n, p=world.activity / world.activity.sum())
    pick = (
        np.where(shares > 0, 1.0 / np.maximum(shares, 1e-9), 0.0)
        if scenario == "covariate_shift"
        else shares > 0
    )
    pairs = np.array([_pick(rng, world, u, pick) for u in users], dtype="int64")
    user_ids = world.user_ids
    truth = shares
    if scenario == "concept_drift":
        truth = world.redrawn(seed + 1).shares()[:, -1]
    elif scenario == "new_entities":
        user_ids = user_ids + p.n_users
        fresh = dataclasses.replace(world, base=rng.normal(0, p.rate_sd, len(world.base)))
        truth = fresh.shares()[:, -1]
    requests = [
        {"user_id": int(user_ids[world.pair_user[i]]), "contact_id": int(world.pair_contact[i])}
        for i in pairs
    ]
    return requests, truth[pairs]


def _pick(rng: np.random.Generator, world: ContactWorld, user: int, weight: np.ndarray) -> int:
    """One pair of ``user`` drawn with ``weight`` (zero for contacts not added yet)."""
    lo = world.blocks[user]
    hi = world.blocks[user + 1] if user + 1 < len(world.blocks) else len(world.base)
    w = np.asarray(weight[lo:hi], dtype="float64")
    return int(lo + rng.choice(hi - lo, p=w / w.sum()))
