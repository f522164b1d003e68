"""Request and response models of the online API, generated from the spec's ``serving`` block.

A request carries the entity keys (looked up in the online store) and the request-time context
(sent to the model as is), each typed and bounded as the spec declares, so a wrong type, an
out-of-range value or an unknown field is a 400 naming the field before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model

from mlsd.spec import ProblemSpec
from mlsd.spec.schema import ColumnSpec

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STRING = 256
REQUEST_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


def _annotation(column: ColumnSpec) -> Any:
    """The strict pydantic type of one request field (JSON "3" is not an int here)."""
    if column.text is not None:  # free text: any string up to its length, possibly empty
        return Annotated[StrictStr, Field(max_length=column.text.max_chars)]
    if column.dtype == "string":
        if column.allowed:
            return Literal[tuple(str(v) for v in column.allowed)]
        return Annotated[str, Field(min_length=1, max_length=MAX_STRING)]
    if column.dtype == "bool":
        return StrictBool
    low, high = column.min, column.max
    if column.dim is not None:  # a vector: exactly dim finite numbers, each within the bounds
        number = Annotated[StrictFloat | StrictInt, Field(ge=low, le=high, allow_inf_nan=False)]
        return Annotated[list[number], Field(min_length=column.dim, max_length=column.dim)]
    if column.dtype == "int64":
        return Annotated[
            StrictInt, Field(ge=INT64_MIN if low is None else low, le=INT64_MAX if high is None else high)
        ]
    return Annotated[StrictFloat | StrictInt, Field(ge=low, le=high, allow_inf_nan=False)]


def request_fields(spec: ProblemSpec) -> dict[str, ColumnSpec]:
    """Every request field with its constraints: entity keys first, then the other context fields.

    A key that is also context (ad click's ``category``) takes the context's constraints.
    """
    fields: dict[str, ColumnSpec] = {}
    for key in spec.serving.entity_keys:
        entity = next(e for e in spec.entities if e.join_key == key)
        fields[key] = spec.serving.context.get(key) or ColumnSpec(
            dtype=entity.dtype, description=entity.description
        )
    for name, column in spec.serving.context.items():
        fields.setdefault(name, column)
    return fields


def _openapi30_nullable(schema: dict[str, Any]) -> None:
    """Say "may be null" the OpenAPI 3.0 way (``nullable: true``), not as ``anyOf [X, null]``.

    BentoML publishes an OpenAPI 3.0 document, where ``type: null`` does not exist: a validator
    of that version reads ``anyOf [integer, null]`` as plain ``integer`` and flags every ``null``
    the server sends (found by the schemathesis fuzz run in tests/test_fuzz.py).
    """
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if not options or {"type": "null"} not in options:
            continue
        rest = [option for option in options if option != {"type": "null"}]
        if len(rest) == 1:
            del prop["anyOf"]
            prop.update(rest[0])
        else:
            prop["anyOf"] = rest
        prop["nullable"] = True


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_openapi30_nullable)


class Prediction(_Strict):
    """One scored request."""

    request_id: str = Field(description="the caller's request_id, or one the server made")
    score: float = Field(description="the model's score (for binary classification P(label = 1))")
    label: int | None = Field(
        default=None, description="score >= serving.label_threshold, if the spec sets one"
    )
    model_tag: str = Field(description="the registered model version that scored the request")
    variant: Literal["stable", "canary"] = Field(description="which rollout arm served it")
    missing_features: list[str] = Field(
        default_factory=list, description="stored features that were unknown or expired and got their default"
    )


class Recommendation(_Strict):
    """One ranked list (retrieval problems)."""

    request_id: str = Field(description="the caller's request_id, or one the server made")
    items: list[int] = Field(description="the recommended item ids, best first")
    scores: list[float] = Field(description="the model's score of each item, in the same order")
    model_tag: str = Field(description="the registered model version that ranked the items")
    variant: Literal["stable", "canary"] = Field(description="which rollout arm served it")
    missing_features: list[str] = Field(
        default_factory=list, description="logged stored features that were unknown or expired"
    )


class Answer(Recommendation):
    """One ranked list of an answer-or-escalate problem, with the decision."""

    answer: bool = Field(
        description="true: answer with items[0]; false: escalate to a person (answer_p under "
        "text_retrieval.escalation.answer_at)"
    )
    answer_p: float = Field(description="the escalation head's P(the top item resolves the query)")


class LabelScores(_Strict):
    """One scored post of a multi-label problem: a score per class, named."""

    request_id: str = Field(description="the caller's request_id, or one the server made")
    scores: dict[str, float] = Field(
        description="P(label = 1) of every class of the spec's label.classes, by name"
    )
    labels: list[str] = Field(
        description="the classes whose score is >= serving.label_threshold, in class order"
    )
    score: float = Field(description="the mean of the class scores: the expected share of classes that apply")
    model_tag: str = Field(description="the registered model version that scored the request")
    variant: Literal["stable", "canary"] = Field(description="which rollout arm served it")
    missing_features: list[str] = Field(
        default_factory=list, description="stored features that were unknown or expired and got their default"
    )


@dataclass(frozen=True)
class ApiModels:
    """The pydantic models of one spec's API."""

    request: type[BaseModel]
    batch_request: type[BaseModel]
    prediction: type[Prediction] | type[Recommendation] | type[LabelScores]
    batch_response: type[BaseModel]


def api_models(spec: ProblemSpec, max_batch: int) -> ApiModels:
    """Build the request, batch request and response models of ``spec``'s online API."""
    fields = request_fields(spec)
    definitions: dict[str, Any] = {
        name: (_annotation(col), Field(description=col.description or f"{col.dtype} request field"))
        for name, col in fields.items()
    }
    response: type[Prediction] | type[Recommendation] | type[LabelScores] = Prediction
    if spec.task == "multilabel":
        response = LabelScores
    if spec.task == "retrieval":
        top_k = spec.serving.top_k or 10
        definitions["k"] = (
            Annotated[StrictInt, Field(ge=1, le=top_k)] | None,
            Field(default=None, description=f"how many items to return (default and most: {top_k})"),
        )
        response = Recommendation
        if spec.text_retrieval is not None and spec.text_retrieval.escalation is not None:
            response = Answer
    definitions["request_id"] = (
        str | None,
        Field(default=None, pattern=REQUEST_ID, description="optional id to join feedback; made if absent"),
    )
    title = "".join(part.title() for part in spec.name.split("_"))
    request = create_model(f"{title}Request", __base__=_Strict, __doc__=spec.question, **definitions)
    batch_request = create_model(
        f"{title}BatchRequest",
        __base__=_Strict,
        requests=(list[request], Field(min_length=1, max_length=max_batch)),  # type: ignore[valid-type]
    )
    batch_response = create_model(
        f"{title}BatchResponse",
        __base__=_Strict,
        predictions=(list[response], ...),  # type: ignore[valid-type]
    )
    return ApiModels(request, batch_request, response, batch_response)
