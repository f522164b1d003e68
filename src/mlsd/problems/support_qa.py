"""Support Q&A: customer questions, a knowledge base of articles, and questions only a person can handle.

The world: support falls into domains (billing, login ...), each with a few intents. Most intents
have one knowledge-base article that answers them; some (a disputed charge, a hacked account)
need a person and have none. Every intent owns a few **key words** and, for each, a few
**paraphrases** (synonyms no article uses; the first common, the others ever rarer, so some are
seen only a few times in the logs, or never); a domain has words its intents share. An
article's title and body hold its intent's key words, domain words, generic support words and one
key word of a sibling intent (the "see also" that confuses word matching).

A question is a customer picking an intent (Zipf popularity) and writing one to three of its key
words, each replaced by a paraphrase with probability ``paraphrase_rate``, maybe a domain word,
and filler ("how", "my" ...). Every intent word belongs to one intent, so the question's intent,
and with it the right article or "needs a person", is a pure function of its text:
:func:`true_rates` recomputes it for any question (1 for the right article, 0 for every other;
all 0 for a question a person must handle), and the oracle answers every answerable question
with its article (recall@1 = 1) and escalates the rest.

The logs: an earlier bot suggested ``shown`` articles per ticket (the right one with probability
``bot_recall``, then same-domain ones); when it missed, the agent who closed the ticket linked the
right article. A ticket is logged as resolved by its article with probability ``tag_rate`` (the
rest of the answerable tickets and every "needs a person" ticket are logged unresolved). The truth
sits beside every row (``true_p``, never a feature). Text is lowercase ASCII tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlsd.problems.synthetic import WindowParams, WorldParams, rate_snapshots
from mlsd.spec import ProblemSpec

FILLER = ["how", "do", "i", "my", "can", "why", "is", "the", "not", "please", "help", "what", "to"]
GENERIC = ["help", "guide", "steps", "support", "article", "learn"]
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
FIRST_ARTICLE_ID = 5001


class GeneratorParams(WorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_domains: int = Field(default=8, ge=1, le=50)
    answerable_per_domain: int = Field(default=5, ge=2, le=50, description="intents with an article")
    human_per_domain: int = Field(default=1, ge=0, le=20, description="intents only a person handles")
    key_words: int = Field(default=4, ge=1, le=10, description="key words per intent")
    paraphrases: int = Field(default=8, ge=1, le=10, description="paraphrases per key word")
    paraphrase_decay: float = Field(
        default=1.0, ge=0, description="P(the j-th paraphrase) ~ 1 / j^decay: higher, rarer tail words"
    )
    domain_words: int = Field(default=6, ge=1, le=50)
    paraphrase_rate: float = Field(
        default=0.8, ge=0, le=1, description="P(a key word is written as a paraphrase)"
    )
    popularity: float = Field(default=1.0, ge=0, description="Zipf exponent of intent popularity")
    n_customers: int = Field(default=3000, ge=10)
    tickets_per_day: int = Field(default=400, ge=10)
    days: int = Field(default=21, ge=5)
    shown: int = Field(default=3, ge=1, le=10, description="articles the earlier bot suggested per ticket")
    bot_recall: float = Field(
        default=0.6, ge=0, le=1, description="P(the earlier bot suggested the right article)"
    )
    tag_rate: float = Field(
        default=0.95, ge=0, le=1, description="P(an answerable ticket is logged as resolved)"
    )


class FeatureParams(BaseModel):
    """conf/base/parameters_problem.yml ``features:`` block."""

    model_config = ConfigDict(extra="forbid")

    customer: WindowParams = WindowParams(every=timedelta(days=1), windows=["30d"])
    prior_rate: float = Field(default=0.7, gt=0, lt=1, description="smoothing prior of resolve rates")
    prior_weight: float = Field(default=5.0, ge=0, description="pseudo-tickets behind the prior")


def _words(n: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    """``n`` new made-up words (two or three syllables) not in ``taken`` (which they join)."""
    out: list[str] = []
    while len(out) < n:
        word = "".join(rng.choice(_SYLLABLES, rng.integers(2, 4)))
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


@dataclass(frozen=True)
class SupportWorld:
    """The latent truth of one seeded world: intents, their words and articles."""

    domain: np.ndarray  # [intents] the intent's domain
    answerable: np.ndarray  # [intents] bool: the intent has an article
    keys: np.ndarray  # [intents, key_words] key words
    paraphrases: np.ndarray  # [intents, key_words, paraphrases] each key word's paraphrases
    domain_vocab: np.ndarray  # [domains, domain_words]
    popularity: np.ndarray  # [intents] P(a ticket is about the intent)
    article_of: np.ndarray  # [intents] the intent's article id, 0 for none
    articles: pd.DataFrame  # article_id, title, body
    owner: dict[str, int]  # every key word and paraphrase -> its intent
    params: GeneratorParams

    @classmethod
    def create(cls, p: GeneratorParams) -> SupportWorld:
        rng = np.random.default_rng(p.seed)
        per_domain = p.answerable_per_domain + p.human_per_domain
        n = p.n_domains * per_domain
        taken = set(FILLER) | set(GENERIC)
        keys = np.asarray(_words(n * p.key_words, rng, taken)).reshape(n, p.key_words)
        shape = (n, p.key_words, p.paraphrases)
        paraphrases = np.asarray(_words(int(np.prod(shape)), rng, taken)).reshape(shape)
        domain_vocab = np.asarray(_words(p.n_domains * p.domain_words, rng, taken)).reshape(p.n_domains, -1)
        domain = np.repeat(np.arange(p.n_domains), per_domain)
        answerable = np.tile(np.arange(per_domain) < p.answerable_per_domain, p.n_domains)
        weights = 1.0 / np.arange(1, n + 1) ** p.popularity
        popularity = rng.permutation(weights / weights.sum())
        article_of = np.zeros(n, dtype=np.int64)
        article_of[answerable] = FIRST_ARTICLE_ID + np.arange(int(answerable.sum()))
        owner = {str(w): i for i in range(n) for w in (*keys[i], *paraphrases[i].ravel())}
        articles = []
        for i in np.flatnonzero(answerable):
            d = domain[i]
            siblings = [j for j in np.flatnonzero(answerable & (domain == d)) if j != i]
            words = rng.choice(domain_vocab[d], min(3, p.domain_words), replace=False)
            title = [*rng.choice(keys[i], min(2, p.key_words), replace=False), words[0]]
            body = [
                *rng.permutation(keys[i]),
                *words,
                *rng.choice(GENERIC, 2, replace=False),
                str(rng.choice(keys[rng.choice(siblings)])),
            ]
            articles.append((article_of[i], " ".join(title), " ".join(rng.permutation(body))))
        frame = pd.DataFrame(articles, columns=["article_id", "title", "body"])
        frame["article_id"] = frame["article_id"].astype("int64")
        return cls(
            domain, answerable, keys, paraphrases, domain_vocab, popularity, article_of, frame, owner, p
        )

    def question(self, rng: np.random.Generator, intent: int) -> str:
        """One customer question about ``intent``."""
        p = self.params
        picked = rng.choice(p.key_words, rng.integers(1, min(3, p.key_words) + 1), replace=False)
        tail = 1.0 / np.arange(1, p.paraphrases + 1) ** p.paraphrase_decay
        words = [
            str(
                self.paraphrases[intent, k, rng.choice(p.paraphrases, p=tail / tail.sum())]
                if rng.random() < p.paraphrase_rate
                else self.keys[intent, k]
            )
            for k in picked
        ]
        if rng.random() < 0.5:
            words.append(str(rng.choice(self.domain_vocab[self.domain[intent]])))
        words += list(rng.choice(FILLER, rng.integers(2, 5), replace=False))
        return " ".join(rng.permutation(words))

    def intent_of(self, question: str) -> int:
        """The intent whose words the question holds (-1 when it holds none)."""
        return next((self.owner[w] for w in str(question).split() if w in self.owner), -1)


def true_rates(
    spec: ProblemSpec, params: Mapping[str, Any], queries: np.ndarray, article_ids: np.ndarray
) -> np.ndarray:
    """The truth for every (question, article), ``[queries, articles]``: 1 when the article answers
    the question's intent, else 0 (a question a person must handle: all 0); unknown ids get NaN."""
    world = SupportWorld.create(GeneratorParams.model_validate(dict(params)))
    ids = np.asarray(article_ids, dtype=np.int64)
    right = np.array([world.article_of[i] if i >= 0 else 0 for i in map(world.intent_of, queries)])
    rates = (right[:, None] == ids[None, :]).astype(np.float64)
    rates[:, ~np.isin(ids, world.articles["article_id"].to_numpy())] = np.nan
    return rates


def _suggested(world: SupportWorld, rng: np.random.Generator, intent: int, n: int) -> np.ndarray:
    """The earlier bot's suggestions: the right article with probability ``bot_recall``, then
    other articles of the domain, then any."""
    ids = world.articles["article_id"].to_numpy()
    same = world.article_of[(world.domain == world.domain[intent]) & world.answerable]
    right = world.article_of[intent]
    pool = [
        np.array([right] if right and rng.random() < world.params.bot_recall else [], dtype=np.int64),
        rng.permutation(same[same != right]),
        rng.permutation(ids[ids != right]),
    ]
    return pd.unique(np.concatenate(pool))[:n]


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables customers, articles, tickets (one row per question; ``resolved_by`` 0 = not
    resolved by an article) and suggestions (one row per article the earlier bot suggested or the
    agent linked, ``position`` 0; ``true_p`` 1 when the article answers the question)."""
    p = GeneratorParams.model_validate(dict(params))
    world = SupportWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    start = p.end_time() - timedelta(days=p.days)
    n = p.tickets_per_day * p.days
    intents = rng.choice(len(world.popularity), n, p=world.popularity)
    ts = start + pd.to_timedelta(np.sort(rng.uniform(0, p.days * 86400, n)), unit="s").floor("s")
    tagged = rng.random(n) < p.tag_rate
    tickets, suggestions = [], []
    for t, intent in enumerate(intents):
        right = int(world.article_of[intent])
        shown = _suggested(world, rng, intent, p.shown)
        tickets.append((t + 1, world.question(rng, intent), ts[t], right if right and tagged[t] else 0))
        suggestions += [(t + 1, int(a), pos + 1, float(a == right)) for pos, a in enumerate(shown)]
        if right and right not in shown:
            suggestions.append((t + 1, right, 0, 1.0))
    frame = pd.DataFrame(tickets, columns=["ticket_id", "question", "ts", "resolved_by"])
    frame.insert(1, "customer_id", rng.integers(1, p.n_customers + 1, n))
    for col in ("ticket_id", "customer_id", "resolved_by"):
        frame[col] = frame[col].astype("int64")
    customers = pd.DataFrame(
        {
            "customer_id": np.arange(1, p.n_customers + 1, dtype="int64"),
            "signup_ts": start - pd.to_timedelta(rng.uniform(1, 730, p.n_customers), unit="D"),
            "plan": rng.choice(["free", "plus", "business"], p.n_customers, p=[0.6, 0.3, 0.1]),
        }
    )
    shown = pd.DataFrame(suggestions, columns=["ticket_id", "article_id", "position", "true_p"])
    shown[["ticket_id", "article_id", "position"]] = shown[["ticket_id", "article_id", "position"]].astype(
        "int64"
    )
    return {"customers": customers, "articles": world.articles, "tickets": frame, "suggestions": shown}


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (ticket, suggested or linked article) with the question, the article's text
    (title and body: what the index holds) and ``resolved`` = the article resolved the ticket,
    stamped ten minutes after the question."""
    articles = raw["articles"].assign(article_text=raw["articles"]["title"] + " " + raw["articles"]["body"])
    events = (
        raw["suggestions"]
        .merge(raw["tickets"], on="ticket_id")
        .merge(articles[["article_id", "article_text"]], on="article_id")
    )
    events["resolved"] = (events["article_id"] == events["resolved_by"]).astype("int64")
    events["resolved_ts"] = events["ts"].where(events["resolved"] == 1) + pd.Timedelta(minutes=10)
    events = events.sort_values(["ts", "ticket_id", "position"], kind="stable").reset_index(drop=True)
    return events[list(spec.tables[spec.events_table].columns)]


def build_feature_tables(
    spec: ProblemSpec,
    raw: Mapping[str, pd.DataFrame],
    events: pd.DataFrame,
    params: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """Daily snapshots of customer_activity: the customer's tickets and smoothed share resolved by
    an article over the window before the snapshot (logged with every request, watched for drift)."""
    f = FeatureParams.model_validate(dict(params))
    tickets = raw["tickets"].copy()
    tickets["resolved_ts"] = tickets["ts"].where(tickets["resolved_by"] > 0) + pd.Timedelta(minutes=10)
    names = ("customer_tickets", "customer_resolve_rate")
    table = rate_snapshots(
        tickets, ["customer_id"], "resolved_ts", f.customer, names, (f.prior_rate, f.prior_weight)
    )
    return {"customer_activity": table}


SimulationScenario = Literal["none", "covariate_shift", "new_entities"]


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` questions from the world the pipeline's data came from, and for each the chance it is
    resolved without a person (1 when an article answers it, 0 when a person must handle it).

    Scenarios: ``none``; ``covariate_shift`` (every question is about the first domain's intents,
    so the words shift); ``new_entities`` (customer ids never seen: logged features use defaults).
    """
    if scenario not in get_args(SimulationScenario):
        raise ValueError(f"scenario {scenario!r} is not one of {list(get_args(SimulationScenario))}")
    p = GeneratorParams.model_validate(dict(params))
    world = SupportWorld.create(p)
    rng = np.random.default_rng(seed)
    weights = world.popularity
    if scenario == "covariate_shift":
        weights = np.where(world.domain == 0, weights, 0.0)
    intents = rng.choice(len(weights), n, p=weights / weights.sum())
    questions = [world.question(rng, int(i)) for i in intents]
    customers = rng.integers(1, p.n_customers + 1, n)
    if scenario == "new_entities":
        customers = p.n_customers + 1 + np.arange(n)
    requests = [{"customer_id": int(c), "question": q} for c, q in zip(customers, questions, strict=True)]
    return requests, world.answerable[intents].astype(np.float64)
