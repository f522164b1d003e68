"""Content understanding: which topics a new post is about, from its text and its image.

The world: each post is about one or more topics (a hidden presence per topic, more likely for
the topics its author favours). A topic shows in the post's words, in its image embedding, or in
both, as the generator's ``visibility`` says: a text-visible topic adds its words to the caption
(at ``word_rate`` among common words), an image-visible topic adds its mean vector ``mu_c`` to the
image embedding, which is ``sum_c present_c * mu_c + N(0, image_sd^2)``. So a text-only model is
blind to image-only topics and the other way round: late fusion of both sees every topic.

Labels come from annotators who miss or misapply a topic with probability ``label_noise``: the true
probability of each label given the post (``true_p_<topic>``, the oracle) is ``1 - label_noise``
for a present topic and ``label_noise`` for an absent one.

Text is lowercase ASCII, tokenized as :data:`mlsd.spec.TOKEN_PATTERN`. Scenarios for monitoring:
``covariate_shift`` (a brighter camera: every embedding shifted), ``concept_drift`` (image-only
topics start to be written about with new words).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlsd.problems.synthetic import WorldParams
from mlsd.spec import ProblemSpec, vector_elements

TOPIC_WORDS = {
    "sports": ["goal", "match", "team", "score", "league", "coach"],
    "food": ["recipe", "dinner", "tasty", "bake", "spicy", "brunch"],
    "travel": ["trip", "flight", "beach", "hotel", "hiking", "views"],
    "pets": ["puppy", "kitten", "walk", "vet", "treats", "fur"],
    "music": ["concert", "guitar", "song", "album", "band", "lyrics"],
    "fashion": ["outfit", "dress", "style", "shoes", "vintage", "denim"],
}
COMMON = [
    "today", "love", "this", "so", "my", "friends", "weekend", "new", "great", "time", "fun", "look",
]  # fmt: skip
_COMMON = np.array(COMMON, dtype=object)


Visibility = Literal["text", "image", "both"]
DEFAULT_VISIBILITY: dict[str, Visibility] = {
    "sports": "both", "food": "text", "travel": "image", "pets": "both", "music": "text", "fashion": "image",
}  # fmt: skip


class GeneratorParams(WorldParams):
    """conf/base/parameters_problem.yml ``generator:`` block."""

    n_posts: int = Field(default=40_000, ge=2_000)
    days: int = Field(default=10, ge=5)
    posts_per_author: int = Field(default=8, ge=1, description="sets the number of authors")
    topics: list[str] = Field(default_factory=lambda: list(TOPIC_WORDS), min_length=2)
    visibility: dict[str, Visibility] = Field(
        default_factory=lambda: dict(DEFAULT_VISIBILITY),
        description="which modality shows each topic",
    )
    topic_rate: float = Field(default=0.18, gt=0, lt=1, description="mean share of posts about a topic")
    author_concentration: float = Field(
        default=0.5, gt=0, description="Dirichlet concentration of authors' topic tastes (low: focused)"
    )
    word_rate: float = Field(default=0.15, gt=0, lt=1, description="share of words from a present topic")
    dim: int = Field(default=16, ge=2, le=256, description="image embedding length (the spec's dim)")
    image_signal: float = Field(default=1.5, gt=0, description="norm of each topic's mean vector")
    image_sd: float = Field(default=0.6, gt=0, description="per-dimension noise of the embedding")
    label_noise: float = Field(default=0.03, ge=0, lt=0.5, description="annotators' error rate per label")
    label_delay_max: timedelta = timedelta(hours=12)
    scenario: Literal["none", "covariate_shift", "concept_drift"] = "none"


class FeatureParams(BaseModel):
    """conf/base/parameters_problem.yml ``features:`` block (author features are static)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Posts:
    """n posts in time order: author, time (seconds from the start), caption, embedding, presence."""

    author_idx: np.ndarray
    offset_s: np.ndarray
    text: list[str]
    image: np.ndarray  # [n, dim] float32
    present: np.ndarray  # [n, topics] bool, the hidden truth


@dataclass(frozen=True)
class ContentWorld:
    """The latent truth of one seeded world: authors, their topic tastes, each topic's image mean."""

    authors: pd.DataFrame
    taste: np.ndarray  # [authors, topics]: P(a post is about the topic)
    mu: np.ndarray  # [topics, dim]: image mean per topic (zero for text-only topics)

    @classmethod
    def create(cls, p: GeneratorParams) -> ContentWorld:
        rng = np.random.default_rng(p.seed)
        n = max(50, p.n_posts // p.posts_per_author)
        k = len(p.topics)
        mix = rng.dirichlet(np.full(k, p.author_concentration), n)
        taste = np.clip(mix * k * p.topic_rate, 0.01, 0.9)
        mu = rng.normal(0, 1, (k, p.dim))
        mu *= p.image_signal / np.linalg.norm(mu, axis=1, keepdims=True)
        shown = np.array([p.visibility.get(t, "both") != "text" for t in p.topics])
        start = p.end_time() - timedelta(days=p.days)
        authors = pd.DataFrame(
            {
                "author_id": np.arange(1, n + 1, dtype="int64"),
                "signup_ts": start - pd.to_timedelta(rng.integers(1, 1000, n), unit="D"),
                "followers": np.round(rng.lognormal(5, 1.5, n)).astype("int64"),
            }
        )
        return cls(authors, taste, mu * shown[:, None])


def _captions(rng: np.random.Generator, p: GeneratorParams, present: np.ndarray, scenario: str) -> list[str]:
    """One caption per post: common words, each replaced by a word of a text-visible present topic
    with probability ``word_rate`` per topic."""
    in_text = np.array(
        [p.visibility.get(t, "both") != "image" or scenario == "concept_drift" for t in p.topics]
    )
    words = [TOPIC_WORDS.get(t, [t]) for t in p.topics]
    out = []
    for row in present & in_text:
        length = int(rng.integers(6, 16))
        tokens = list(_COMMON[rng.integers(0, len(_COMMON), length)])
        for j in np.flatnonzero(row):
            for i in np.flatnonzero(rng.random(length) < p.word_rate):
                tokens[i] = words[j][rng.integers(0, len(words[j]))]
        out.append(" ".join(tokens))
    return out


def _draw(world: ContentWorld, p: GeneratorParams, rng: np.random.Generator, n: int, scenario: str) -> Posts:
    """n posts in time order, with their topics' words and image embedding."""
    author = rng.integers(0, len(world.authors), n)
    present = rng.random((n, len(p.topics))) < world.taste[author]
    image = present.astype(np.float64) @ world.mu + rng.normal(0, p.image_sd, (n, p.dim))
    if scenario == "covariate_shift":
        image += 0.5
    text = _captions(rng, p, present, scenario)
    offset = rng.integers(0, p.days * 86400, n)
    order = np.argsort(offset, kind="stable")
    return Posts(
        author_idx=author[order],
        offset_s=offset[order],
        text=[text[i] for i in order],
        image=image[order].astype(np.float32),
        present=present[order],
    )


def _truth(p: GeneratorParams, present: np.ndarray) -> np.ndarray:
    """P(annotators apply each label | the post): the oracle's scores."""
    return np.where(present, 1 - p.label_noise, p.label_noise)


def _world_and_posts(p: GeneratorParams) -> tuple[ContentWorld, Posts, np.random.Generator]:
    world = ContentWorld.create(p)
    rng = np.random.default_rng(p.seed + 100)
    return world, _draw(world, p, rng, p.n_posts, p.scenario), rng


def _names(spec: ProblemSpec) -> tuple[str, list[str], list[str]]:
    """The embedding field (the serving context's vector), the label and truth column names."""
    vector = next(name for name, col in spec.serving.context.items() if col.dim is not None)
    return vector, spec.label.columns(), spec.label.truth_columns()


def generate(spec: ProblemSpec, params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables authors, posts (caption, flat embedding, ``true_p_<topic>``) and post_labels
    (each label per topic, applied after a delay)."""
    p = GeneratorParams.model_validate(dict(params))
    vector, label_cols, truth_cols = _names(spec)
    if list(spec.label.classes or ()) != p.topics:
        raise ValueError(
            f"generator.topics {p.topics} must equal the spec's label.classes {spec.label.classes}"
        )
    world, posts, rng = _world_and_posts(p)
    ts = p.end_time() - timedelta(days=p.days) + pd.to_timedelta(posts.offset_s, unit="s")
    ids = np.arange(1, len(posts.text) + 1, dtype="int64")
    table = pd.DataFrame(
        {
            "post_id": ids,
            "author_id": world.authors["author_id"].to_numpy()[posts.author_idx],
            "ts": ts,
            "text": posts.text,
        }
    )
    table[vector_elements(vector, p.dim)] = posts.image
    true_p = _truth(p, posts.present)
    table[truth_cols] = true_p
    delay = rng.uniform(60, p.label_delay_max.total_seconds(), len(table))
    post_labels = pd.DataFrame({"post_id": ids, "label_ts": ts + pd.to_timedelta(np.round(delay), unit="s")})
    post_labels[label_cols] = (rng.random(true_p.shape) < true_p).astype("int64")
    return {"authors": world.authors, "posts": table, "post_labels": post_labels}


def build_events(spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Labelled posts: the post with its labels and when they came."""
    events = raw["posts"].merge(raw["post_labels"], on="post_id", how="left")
    columns = spec.tables[spec.events_table].columns
    return events[[name for field, col in columns.items() for name in col.flat(field)]]


def build_feature_tables(
    spec: ProblemSpec, raw: Mapping[str, pd.DataFrame], events: pd.DataFrame, params: Mapping[str, Any]
) -> dict[str, pd.DataFrame]:
    """author_profile: followers, known from signup."""
    FeatureParams.model_validate(dict(params))
    authors = raw["authors"]
    return {
        "author_profile": authors[["author_id", "followers"]].assign(event_timestamp=authors["signup_ts"])
    }


def simulate(
    spec: ProblemSpec, params: Mapping[str, Any], n: int, scenario: str, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` upload requests (author, caption, embedding) from the pipeline's world and each post's
    true label probabilities ``[n, topics]``. ``new_entities``: every author is new to the store."""
    if scenario not in ("none", "covariate_shift", "concept_drift", "new_entities"):
        raise ValueError(
            f"scenario {scenario!r} is not one of none, covariate_shift, concept_drift, new_entities"
        )
    p = GeneratorParams.model_validate(dict(params))
    vector = _names(spec)[0]
    world, _, _ = _world_and_posts(p)
    posts = _draw(world, p, np.random.default_rng(seed), n, scenario)
    ids = world.authors["author_id"].to_numpy()[posts.author_idx]
    if scenario == "new_entities":
        ids = len(world.authors) + 1 + np.arange(n)
    requests = [
        {"author_id": int(a), "text": t, vector: [round(float(v), 5) for v in e]}
        for a, t, e in zip(ids, posts.text, posts.image, strict=True)
    ]
    return requests, _truth(p, posts.present)
