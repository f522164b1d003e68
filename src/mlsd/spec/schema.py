"""The problem spec: every problem-specific fact, as validated data.

Everything downstream is derived from one :class:`ProblemSpec`: the expectation suites, the Feast
objects, the training set, the model inputs, the serving request and the drift columns. Models
are strict (``extra="forbid"``) so a misspelt key fails at load instead of being ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Dtype = Literal["int64", "float32", "float64", "string", "bool", "timestamp"]
TaskType = Literal["binary_classification", "ranking", "retrieval", "uplift", "multilabel"]
NON_PROBABILITY_TASKS = ("retrieval", "uplift", "multilabel")
"""Tasks whose served score is not a probability of the label (a ranked list's scores, an effect,
the mean of a multi-label row's class scores):
log loss, AUC and the paired canary analysis do not apply to them."""
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=63)]
TOKEN_PATTERN = r"[A-Za-z0-9]+"
"""How every text input is split into tokens, in training, in the ONNX graph and in drift counts.

ASCII letters and digits only, case kept: ONNX Runtime's tokenizer matches scikit-learn's on this
pattern, not on scikit-learn's default ``(?u)\\b\\w\\w+\\b`` (Unicode word classes). StringNormalizer
lowercases in the graph only in a locale the serving machine has: the text retrieval graph folds
ASCII case in the "C" locale, which every platform has (mlsd.export.text_retrieval_graph); for the
other text inputs, lowercase the text before it reaches the model where case should not matter.
"""

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> Any:
    """Accept ``"30m"``, ``"2d"``, ``"1w"`` (and anything pydantic accepts for timedelta)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class StrictModel(BaseModel):
    """Base for spec models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _unset(value: Any) -> bool:
    """Fields added after specs were first hashed leave the dump when unset, so old specs keep
    their spec_hash (and registered models their match)."""
    return value is None


class TextSpec(StrictModel):
    """A free-text string input, read by the model as TF-IDF weights of its tokens (in the graph).

    Tokens are :data:`TOKEN_PATTERN` matches, case kept; ``sublinear_tf`` is left out on purpose:
    skl2onnx 1.20 exports it wrongly (probabilities off by ~4e-3 against scikit-learn).
    """

    max_features: int | None = Field(default=5000, ge=1, description="vocabulary size (most frequent terms)")
    ngram_max: int = Field(default=1, ge=1, le=3, description="longest n-gram of tokens")
    min_df: int = Field(default=2, ge=1, description="a term must appear in this many training rows")
    binary: bool = Field(default=False, description="term presence instead of term counts")
    max_chars: int = Field(default=2000, ge=1, le=100_000, description="longest value a request may send")


class ColumnSpec(StrictModel):
    """One column of a table (or one feature field) and the constraints its values obey."""

    dtype: Dtype
    description: str = ""
    nullable: bool = False
    unique: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str | int] | None = None
    references: str | None = Field(
        default=None, description="'table.column' whose values this column must take"
    )
    default: float | int | str | bool | None = Field(
        default=None, description="value served and trained on when a feature is missing"
    )
    text: TextSpec | None = Field(
        default=None, exclude_if=_unset, description="free text: the model reads it as TF-IDF"
    )
    dim: int | None = Field(
        default=None,
        ge=2,
        le=1024,
        exclude_if=_unset,
        description="a fixed-length vector of this many numbers (an embedding): stored flat as "
        "columns name_0 .. name_{dim-1}, sent in a request as one list, one model input per element",
    )

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if self.text is not None and (self.dtype != "string" or self.allowed is not None):
            raise ValueError("text needs dtype string and no allowed list (a closed set is a category)")
        if self.dim is not None and (self.dtype not in ("float32", "float64") or self.unique):
            raise ValueError("dim (a vector) needs dtype float32 or float64 and unique: false")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        numeric = self.dtype in ("int64", "float32", "float64")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"min/max need a numeric dtype, not {self.dtype!r}")
        if self.allowed is not None and self.dtype not in ("int64", "string"):
            raise ValueError(f"allowed values need dtype int64 or string, not {self.dtype!r}")
        if self.default is not None and isinstance(self.default, str) != (self.dtype == "string"):
            raise ValueError(f"default {self.default!r} does not match dtype {self.dtype!r}")
        if self.references is not None and self.references.count(".") != 1:
            raise ValueError(f"references must look like 'table.column', got {self.references!r}")
        return self

    def flat(self, name: str) -> dict[str, ColumnSpec]:
        """The stored columns of this field: itself, or a vector's elements ``name_0`` ..
        (each with the vector's constraints, bounds applying per element)."""
        if self.dim is None:
            return {name: self}
        element = self.model_copy(update={"dim": None})
        return {name_i: element for name_i in vector_elements(name, self.dim)}


def vector_elements(name: str, dim: int) -> list[str]:
    """The flat column names of a vector field: ``name_0`` .. ``name_{dim-1}``."""
    return [f"{name}_{i}" for i in range(dim)]


class TableSpec(StrictModel):
    """A table: raw input, or the events table the problem module derives from raw tables."""

    description: str = ""
    layer: Literal["raw", "events"] = "raw"
    columns: dict[Name, ColumnSpec]
    timestamp: str | None = Field(default=None, description="the event-time column, if any")
    min_rows: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _check(self) -> TableSpec:
        if self.timestamp is not None:
            column = self.columns.get(self.timestamp)
            if column is None or column.dtype != "timestamp":
                raise ValueError(f"timestamp {self.timestamp!r} must be a column of dtype timestamp")
        return self


class EntitySpec(StrictModel):
    """A Feast entity: what features are keyed by."""

    name: Name
    join_key: Name
    dtype: Literal["int64", "string"]
    description: str = ""


class FeatureViewSpec(StrictModel):
    """A Feast feature view fed by one feature table the problem module computes.

    A feature table has the entities' join keys, an ``event_timestamp`` column (UTC) and the
    fields. A row is visible to an event at time t only if its event_timestamp <= t and it is not
    older than ``ttl`` (``ttl`` of 0 means it never expires).
    """

    name: Name
    description: str = ""
    entities: list[Name] = Field(min_length=1)
    source: Name
    ttl: Duration
    online: bool = True
    fields: dict[Name, ColumnSpec] = Field(min_length=1)


class LabelSpec(StrictModel):
    """Where the label lives and where the generator's truth lives (never a feature)."""

    table: Name
    column: Name
    truth: Name = Field(description="true probability/relevance/effect from the generator")
    timestamp: Name
    group: Name | None = Field(
        default=None, description="column grouping rows for ranking metrics (e.g. session_id); not an input"
    )
    classes: list[Name] | None = Field(
        default=None,
        min_length=2,
        exclude_if=_unset,
        description="task multilabel: the labels, each a 0/1 column {column}_{class} beside its "
        "truth {truth}_{class}; the model scores every class",
    )

    def columns(self) -> list[str]:
        """The label column, or one per class (multilabel), in class order."""
        return [self.column] if self.classes is None else [f"{self.column}_{c}" for c in self.classes]

    def truth_columns(self) -> list[str]:
        """The truth column, or one per class (multilabel), in class order."""
        return [self.truth] if self.classes is None else [f"{self.truth}_{c}" for c in self.classes]


class ExpectationSpec(StrictModel):
    """A Great Expectations expectation by name, for checks column constraints cannot say."""

    table: str = Field(description="a spec table name, or 'training_set'")
    type: Annotated[str, Field(pattern=r"^expect_[a-z0-9_]+$")]
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(StrictModel):
    """A model family (short name) with its hyper-parameters, search space and the inputs it reads."""

    family: str
    inputs: list[Name] | None = Field(
        default=None,
        min_length=1,
        exclude_if=_unset,
        description="the model inputs this model reads, a subset kept in spec order (default: all)",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    search_space: dict[str, Any] = Field(default_factory=dict)


class GateSpec(StrictModel):
    """When a model may be registered, for one metric."""

    max_gap_to_oracle: float | None = Field(default=None, ge=0)
    must_beat_baseline: bool = False


class MetricSpec(StrictModel):
    """An offline metric by registry name; the first one listed is the tuning target."""

    name: Name
    higher_is_better: bool
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the metric")
    gate: GateSpec | None = None
    stage: Literal["candidates"] | None = Field(
        default=None,
        exclude_if=_unset,
        description="candidates: a two-stage metric of stage 1's lists (default: the served list)",
    )


class ModelInput(StrictModel):
    """One input of the exported model: numeric features are served as float32, strings as strings,
    ids (a retrieval graph's user id) as int64."""

    name: Name
    dtype: Literal["float32", "string", "int64"]
    categories: list[str] | None = Field(
        default=None, description="the known values of a string input (its spec 'allowed' list)"
    )
    text: TextSpec | None = Field(
        default=None, exclude_if=_unset, description="a free-text string input: TF-IDF in the graph"
    )
    vector: Name | None = Field(
        default=None,
        exclude_if=_unset,
        description="element ``index`` of this request vector field (an embedding's number)",
    )
    index: int | None = Field(default=None, ge=0, exclude_if=_unset)


class UpliftSpec(StrictModel):
    """An uplift problem's treatment and cost columns (events table) and its budget.

    The events come from a randomized experiment: ``treatment`` is 1 for rows that got the
    intervention (a coupon), 0 for the control group. The model estimates the per-row effect
    ``tau(x) = P(label | treated, x) - P(label | control, x)``; a campaign treats the rows with
    the best ``tau / cost`` until ``budget_share`` of the cost of treating everyone is spent.
    """

    treatment: Name = Field(description="0/1 column: was this row treated (randomized)")
    cost: Name = Field(description="what treating this row costs (e.g. the coupon's value)")
    budget_share: float = Field(
        gt=0, le=1, description="the budget, as a share of the cost of treating every holdout row"
    )


class EscalationSpec(StrictModel):
    """Answer or escalate: a question-answering retrieval problem (support Q&A) answers with its top
    item only when it is confident; otherwise it hands the query to a person.

    An escalation head (a logistic model on the top item's score and the query's TF-IDF vector)
    learns from the logged searches whether any item resolved them; the graph outputs its
    ``answer_p`` and the server answers when it is at least ``answer_at``.
    """

    answer_at: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="answer with the top item when P(a top item resolves the query) is at least this; "
        "below it, escalate to a person",
    )


class TextRetrievalSpec(StrictModel):
    """A retrieval problem whose request is a query text matched against a document collection.

    The graph reads only ``query`` (a ``serving.context`` text column) and holds the documents: the
    TF-IDF matrix of each item's ``document_text`` (an events-table column, the item's latest
    value in training) and the item's ranker features (the numeric ``model.inputs``, feature
    fields of the item's view). A search is one ``label.group``. Tuning judges a search by its
    logged labels (what was shown and clicked); the holdout judges it by the generator's truth
    over every item (logged clicks miss what the old system never showed).
    """

    query: Name = Field(description="the serving.context text column a request sends")
    document_text: Name = Field(description="the events column holding each item's text")
    candidates: int = Field(default=100, ge=1, le=10_000, description="items the ranker re-scores")
    relevant_at: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="holdout judgments: an item is relevant to a search when its true relevance "
        "(label.truth, recomputed for every item) is at least this",
    )
    escalation: EscalationSpec | None = Field(
        default=None,
        exclude_if=_unset,
        description="answer-or-escalate: the response also says whether to answer with the top item",
    )


class RetrievalSpec(StrictModel):
    """A two-stage retrieval problem: candidate generation, then a ranker that re-scores them.

    Stage 1 is the spec's ``model`` (a factor recommender fitted on the ``interaction`` counts): it
    proposes ``candidates`` items per user. Stage 2, ``ranker``, is a GBDT over (user, candidate)
    features (the stage-1 score, user and item activity and label rates, and for every
    ``item_columns`` column the item's value, the user's label-weighted mean and their gap) that
    predicts the label; the served list is the ``serving.top_k`` best candidates by its score. Both
    stages are one ONNX graph, so they are registered, rolled out and rolled back as one model.
    """

    candidates: int = Field(ge=1, le=1000, description="items stage 1 hands to the ranker per user")
    interaction: Name = Field(description="events column of counts the candidate model fits on (e.g. views)")
    item_columns: list[Name] = Field(
        default_factory=list, description="numeric item attributes of the events table the ranker reads"
    )
    ranker: ModelSpec = Field(description="the ranker family (gbdt) and its parameters")


class ServingSpec(StrictModel):
    """The online request: entity keys plus request-time context the model also uses."""

    routing_key: Name
    entity_keys: list[Name] = Field(min_length=1)
    context: dict[Name, ColumnSpec] = Field(default_factory=dict)
    latency_budget_ms: float = Field(gt=0)
    label_threshold: float | None = Field(
        default=None, gt=0, lt=1, description="a response label is score >= this; none when unset"
    )
    top_k: int | None = Field(
        default=None, ge=1, le=1000, description="retrieval: how many items a response ranks (at most)"
    )


class DriftSpec(StrictModel):
    """What is watched in production, and when it calls for retraining."""

    columns: list[Name] = Field(min_length=1)
    max_drifted_share: float = Field(
        default=0.3, gt=0, le=1, description="retrain when more than this share of columns drifted"
    )
    retrain_on_prediction_drift: bool = Field(default=True, description="a drifted score distribution")
    max_log_loss_increase: float | None = Field(
        default=0.25,
        gt=0,
        description="retrain when stable's online log loss exceeds its holdout log loss by this fraction",
    )


class DesignSpec(StrictModel):
    """What the design document says beyond the machine-readable spec: the interview's numbers and
    judgement calls (docs/DESIGN.md is rendered from the spec, this block included)."""

    objective: str = Field(min_length=1, description="the business objective, one sentence")
    scale: dict[str, float] = Field(
        default_factory=dict, description="assumed production numbers, e.g. peak_qps: 50000 (name -> number)"
    )
    constraints: list[str] = Field(default_factory=list, description="requirements beyond the spec's numbers")
    bottlenecks: list[str] = Field(default_factory=list)
    tradeoffs: list[str] = Field(default_factory=list)
    scaling: list[str] = Field(default_factory=list, description="how the system grows past one machine")


class ProblemSpec(StrictModel):
    """One ML system design problem, end to end."""

    name: Name
    question: str = Field(min_length=1)
    task: TaskType
    problem_module: str = Field(pattern=r"^[A-Za-z_][\w.]*$", description="import path of the problem module")
    entities: list[EntitySpec] = Field(min_length=1)
    tables: dict[Name, TableSpec] = Field(min_length=1)
    feature_views: list[FeatureViewSpec] = Field(min_length=1)
    label: LabelSpec
    expectations: list[ExpectationSpec] = Field(default_factory=list)
    model: ModelSpec
    baseline: ModelSpec
    metrics: list[MetricSpec] = Field(min_length=1)
    online_metric: str
    serving: ServingSpec
    drift: DriftSpec
    uplift: UpliftSpec | None = Field(default=None, description="task uplift: treatment, cost, budget")
    text_retrieval: TextRetrievalSpec | None = Field(
        default=None, exclude_if=_unset, description="task retrieval by a query text: query, documents"
    )
    retrieval: RetrievalSpec | None = Field(
        default=None, exclude_if=_unset, description="task retrieval: a second, ranking stage"
    )
    design: DesignSpec | None = None

    @property
    def feature_service(self) -> str:
        """Name of the Feast feature service that serves every feature view."""
        return f"{self.name}_features"

    @property
    def scores_are_probabilities(self) -> bool:
        """Whether a served score is P(label = 1), what log loss, AUC and the canary analysis read."""
        return self.task not in NON_PROBABILITY_TASKS

    @property
    def events_table(self) -> str:
        return self.label.table

    def entity(self, name: str) -> EntitySpec:
        return next(e for e in self.entities if e.name == name)

    def feature_fields(self) -> dict[str, ColumnSpec]:
        """Every feature view field, in spec order (the model's stored-feature order)."""
        return {k: v for fv in self.feature_views for k, v in fv.fields.items()}

    def model_inputs(self) -> list[str]:
        """Every input a model may read, in order: stored features, then request context (a model's
        ``inputs`` may pick a subset, see :meth:`inputs_of`)."""
        return [*self.feature_fields(), *self.serving.context]

    def model_input_schema(self) -> list[ModelInput]:
        """The served model's inputs in order with their dtype: the ONNX signature and request shape."""
        return self.inputs_of(self.model)

    def inputs_of(self, model: ModelSpec) -> list[ModelInput]:
        """The inputs ``model`` (the spec's model or baseline) reads, in spec order: every model
        input, or the subset its ``inputs`` names (a text-only baseline, say).

        A retrieval graph takes only the routing key (the user id) and looks its factors up itself;
        a text retrieval graph takes only the query text (it holds the documents and their features).
        """
        columns = {**self.feature_fields(), **self.serving.context}
        if self.text_retrieval is not None:
            query = self.text_retrieval.query
            return _model_input(query, columns[query]) if query in columns else []
        if self.task == "retrieval":
            return [ModelInput(name=self.serving.routing_key, dtype="int64")]
        chosen = set(model.inputs or self.model_inputs())
        return [
            item
            for name in self.model_inputs()
            if name in chosen
            for item in _model_input(name, columns[name])
        ]

    def drift_inputs(self) -> list[str]:
        """The logged model inputs drift is measured on: ``drift.columns``, a vector field as its
        elements (drift per dimension)."""
        columns = {**self.feature_fields(), **self.serving.context}
        return [name for field in self.drift.columns for name in columns[field].flat(field)]

    def text_inputs(self) -> list[str]:
        """The model's free-text inputs (their drift is watched through token counts)."""
        return [i.name for i in self.model_input_schema() if i.text is not None]

    @model_validator(mode="after")
    def _cross_check(self) -> ProblemSpec:
        errors = [*self._check_tables(), *self._check_features(), *self._check_serving()]
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def _check_tables(self) -> list[str]:
        errors = []
        for tname, table in self.tables.items():
            for cname, column in table.columns.items():
                if column.references is None:
                    continue
                rtable, rcol = column.references.split(".")
                if rtable not in self.tables or rcol not in self.tables[rtable].columns:
                    errors.append(
                        f"tables.{tname}.columns.{cname}.references: "
                        f"{column.references!r} is not a column of any table"
                    )
        events = self.tables.get(self.label.table)
        if events is None or events.layer != "events":
            errors.append(f"label.table: {self.label.table!r} must name a table with layer: events")
        else:
            parts: dict[str, Sequence[str | None]] = {
                "timestamp": [self.label.timestamp],
                "group": [self.label.group],
            }
            parts |= {"column": [*self.label.columns()], "truth": [*self.label.truth_columns()]}
            for part, cols in parts.items():
                for col in cols:
                    if col is not None and col not in events.columns:
                        errors.append(f"label.{part}: {col!r} is not a column of {self.label.table}")
        if (self.task == "multilabel") != (self.label.classes is not None):
            errors.append("label.classes: a task multilabel problem lists its classes, and only it")
        tables = {*self.tables, "training_set"}
        for i, exp in enumerate(self.expectations):
            if exp.table not in tables:
                errors.append(f"expectations[{i}].table: {exp.table!r} is not one of {sorted(tables)}")
        return errors

    def _check_features(self) -> list[str]:
        errors = []
        entity_names = {e.name for e in self.entities}
        seen: dict[str, str] = {}
        for fv in self.feature_views:
            for ent in fv.entities:
                if ent not in entity_names:
                    errors.append(f"feature_views.{fv.name}.entities: unknown entity {ent!r}")
            for field in fv.fields:
                if field in seen:
                    errors.append(
                        f"feature_views.{fv.name}.fields.{field}: also defined in {seen[field]}; "
                        "feature names must be unique"
                    )
                seen[field] = fv.name
        vectors = sorted(name for name, col in self.feature_fields().items() if col.dim is not None)
        if vectors:
            errors.append(
                f"feature_views: {vectors} are vectors (dim); a vector is request context (serving.context), "
                "not a stored feature"
            )
        leaks = {*self.label.columns(), *self.label.truth_columns()} & {*seen, *self.serving.context}
        if leaks:
            errors.append(
                f"feature_views/serving.context: {sorted(leaks)} is the label or the truth, "
                "never a model input"
            )
        if self.label.group is not None and self.label.group in {*seen, *self.serving.context}:
            errors.append(
                f"label.group: {self.label.group!r} groups rows for ranking metrics; it cannot also "
                "be a model input (feature field or serving.context)"
            )
        return errors

    def _check_serving(self) -> list[str]:
        errors = []
        keys = {e.join_key for e in self.entities}
        for key in self.serving.entity_keys:
            if key not in keys:
                errors.append(f"serving.entity_keys: {key!r} is not the join key of an entity")
        if self.serving.routing_key not in self.serving.entity_keys:
            errors.append(f"serving.routing_key: {self.serving.routing_key!r} must be an entity key")
        events = self.tables.get(self.label.table)
        for name in self.serving.context:
            if events is not None and name not in events.columns:
                errors.append(f"serving.context.{name}: not a column of {self.label.table}")
        known = set(self.model_inputs())
        columns = {**self.feature_fields(), **self.serving.context}
        for name in known:
            if columns[name].dtype == "timestamp":
                errors.append(f"{name}: a timestamp cannot be a model input; derive a number from it")
        for role, model in (("model", self.model), ("baseline", self.baseline)):
            unknown = sorted(set(model.inputs or ()) - known)
            if unknown:
                errors.append(f"{role}.inputs: {unknown} are not model inputs (feature fields or context)")
        served = set(self.model.inputs or known)
        for col in self.drift.columns:
            if col not in served:
                where = "" if self.model.inputs is None else " (of model.inputs)"
                errors.append(f"drift.columns: {col!r} is not a model input{where}")
        if self.task == "retrieval":
            errors += self._check_retrieval()
        elif self.retrieval is not None:
            errors.append(
                f"retrieval: only a task retrieval problem has a ranking stage (task is {self.task})"
            )
        errors += self._check_uplift()
        errors += self._check_text_retrieval()
        metric_names = {m.name for m in self.metrics}
        if not self.metrics or len(metric_names) != len(self.metrics):
            errors.append("metrics: names must be unique")
        return errors

    def _check_retrieval(self) -> list[str]:
        errors = []
        if self.serving.top_k is None:
            errors.append("serving.top_k: a retrieval problem must say how many items a response ranks")
        key = next((e for e in self.entities if e.join_key == self.serving.routing_key), None)
        if key is not None and key.dtype != "int64":
            errors.append(
                f"serving.routing_key: a retrieval graph looks up int64 ids, {key.name} is {key.dtype}"
            )
        staged = [m.name for m in self.metrics if m.stage is not None]
        if self.retrieval is None:
            if staged:
                errors.append(
                    f"metrics {staged}: stage 'candidates' needs a two-stage problem (a retrieval block)"
                )
            return errors
        events = self.tables.get(self.label.table)
        numeric = ("int64", "float32", "float64")
        for col in (self.retrieval.interaction, *self.retrieval.item_columns):
            if events is not None and (col not in events.columns or events.columns[col].dtype not in numeric):
                errors.append(f"retrieval: {col!r} must be a numeric column of {self.label.table}")
        if self.metrics[0].stage != "candidates":
            errors.append(
                "metrics[0]: Tune optimizes the first metric, which scores the candidate model; a "
                "two-stage problem lists a stage: candidates metric first"
            )
        k = self.serving.top_k or 0
        if k > self.retrieval.candidates:
            errors.append(f"serving.top_k ({k}) exceeds retrieval.candidates ({self.retrieval.candidates})")
        return errors

    def ranker_features(self, model: ModelSpec) -> list[str]:
        """A text retrieval model's document features: its ``inputs`` besides the query."""
        query = self.text_retrieval.query if self.text_retrieval else None
        return [name for name in (model.inputs or ()) if name != query]

    def _check_text_retrieval(self) -> list[str]:
        tr = self.text_retrieval
        if tr is None:
            return []
        if self.task != "retrieval":
            return [f"text_retrieval: only a task retrieval problem has this block (task is {self.task})"]
        errors = []
        query = self.serving.context.get(tr.query)
        if query is None or query.text is None:
            errors.append(f"text_retrieval.query: {tr.query!r} must be a serving.context column with text:")
        events = self.tables.get(self.label.table)
        doc = None if events is None else events.columns.get(tr.document_text)
        if doc is None or doc.dtype != "string":
            errors.append(
                f"text_retrieval.document_text: {tr.document_text!r} must be a string column of "
                f"{self.label.table}"
            )
        if self.label.group is None:
            errors.append("label.group: text retrieval groups the events of one search; name its column")
        fields = self.feature_fields()
        for role, model in (("model", self.model), ("baseline", self.baseline)):
            if model.inputs is None or tr.query not in model.inputs:
                errors.append(f"{role}.inputs: a text retrieval model reads the query {tr.query!r}; list it")
            wrong = [n for n in self.ranker_features(model) if n not in fields or fields[n].dtype == "string"]
            if wrong:
                errors.append(f"{role}.inputs: {wrong} are not numeric feature fields (document features)")
        return errors

    def _check_uplift(self) -> list[str]:
        if self.uplift is None:
            if self.task == "uplift":
                return ["uplift: a task uplift problem needs its treatment, cost and budget_share"]
            return []
        if self.task != "uplift":
            return [f"uplift: only a task uplift problem has this block (task is {self.task})"]
        errors = []
        events = self.tables.get(self.label.table)
        inputs = set(self.model_inputs())
        for part in ("treatment", "cost"):
            col = getattr(self.uplift, part)
            if events is not None and col not in events.columns:
                errors.append(f"uplift.{part}: {col!r} is not a column of {self.label.table}")
            if col in inputs:
                errors.append(
                    f"uplift.{part}: {col!r} is a model input; the model estimates the effect of the "
                    "treatment for any cost, so neither may be a feature field or serving.context"
                )
        return errors


def _model_input(name: str, column: ColumnSpec) -> list[ModelInput]:
    """The model inputs of one field: one, or one float32 per element of a vector."""
    if column.dtype == "string":
        categories = None if column.allowed is None else [str(v) for v in column.allowed]
        return [ModelInput(name=name, dtype="string", categories=categories, text=column.text)]
    if column.dim is not None:
        return [
            ModelInput(name=element, dtype="float32", vector=name, index=i)
            for i, element in enumerate(vector_elements(name, column.dim))
        ]
    return [ModelInput(name=name, dtype="float32")]
