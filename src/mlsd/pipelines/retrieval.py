"""The train and monitoring nodes of a retrieval problem (spec task ``retrieval``).

Same datasets and names as the binary nodes (mlsd.pipelines.by_task picks these), different work:
interactions instead of feature rows, ranked lists instead of scores. The model is fitted on the
(user, item, count) interactions of the training span; evaluation ranks items for each holdout
user and compares the lists with the items the user engaged with in the holdout; the oracle ranks
every item by the generator's true rate (recomputed by the problem module's ``true_rates`` from
the generator parameters).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mlsd.errors import SpecError
from mlsd.evaluation import (
    RETRIEVAL_METRICS,
    check_retrieval_metrics,
    metric_k,
    render_markdown,
    retrieval_report,
)
from mlsd.export import retrieval_feeds, retrieval_parity, retrieval_to_onnx, session, two_stage_to_onnx
from mlsd.monitoring.drift import PREDICTION, DriftParams
from mlsd.pipelines import as_dict
from mlsd.pipelines.fitting import fit_nodes, fit_report, tuning_report
from mlsd.problems import load_problem
from mlsd.spec import ModelInput, ModelSpec, ProblemSpec, spec_from_mapping, spec_hash
from mlsd.training import (
    FactorModel,
    Interactions,
    RayParams,
    StageColumns,
    TrainingParams,
    TwoStageModel,
    feature_tables,
    fingerprint,
    fit_recommender_on_ray,
    get_family,
    ranker_training_rows,
    search_recommender,
    time_split,
)


def event_keys(spec: ProblemSpec) -> tuple[str, str, str]:
    """The user column (routing key), the item column (the other entity key of the events table)
    and the count column (the label)."""
    user = spec.serving.routing_key
    events = spec.tables[spec.events_table].columns
    items = [e.join_key for e in spec.entities if e.join_key != user and e.join_key in events]
    if len(items) != 1:
        raise SpecError(
            f"{spec.events_table}: a retrieval events table needs exactly one item key besides {user!r} "
            f"(the join key of another entity); found {items}"
        )
    return user, items[0], spec.label.column


def _interactions(spec: ProblemSpec, rows: pd.DataFrame) -> Interactions:
    """What the (candidate) model fits on: the label counts, or a two-stage spec's interaction."""
    user, item, count = event_keys(spec)
    count = count if spec.retrieval is None else spec.retrieval.interaction
    return Interactions.from_frame(rows, user, item, count)


def _relevant(spec: ProblemSpec, rows: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """The users of ``rows`` and, for each, the items they engaged with (binary relevance)."""
    user, item, count = event_keys(spec)
    engaged = rows[rows[count] > 0].groupby(user)[item].unique()
    return engaged.index.to_numpy(dtype=np.int64), [np.asarray(v, dtype=np.int64) for v in engaged]


def split_training_set(
    problem: Mapping[str, Any], training: Mapping[str, Any], training_set: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Train / validation / holdout by time, and the user ids the ONNX parity check ranks for
    (holdout users, then trained users, then three ids no one has: the cold-start path)."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    check_retrieval_metrics(spec.metrics)
    user = event_keys(spec)[0]
    split = time_split(training_set, spec.label.timestamp, params.holdout, params.validation)
    known = pd.unique(pd.concat([split.holdout[user], split.train[user], split.valid[user]]))
    unknown = int(training_set[user].max()) + 1 + np.arange(3)
    ids = np.concatenate([known[: params.parity_rows], unknown]).astype(np.int64)
    report = {
        "fingerprint": fingerprint(training_set),
        "rows": {"train": len(split.train), "valid": len(split.valid), "holdout": len(split.holdout)},
        "valid_start": split.valid_start.isoformat(),
        "holdout_start": split.holdout_start.isoformat(),
        "parity_rows": len(ids),
    }
    return split.train, split.valid, split.holdout, pd.DataFrame({user: ids}), report


def _scorer(spec: ProblemSpec, rows: pd.DataFrame) -> Any:
    """``model -> primary metric`` on the items each user engaged with in ``rows``."""
    primary = spec.metrics[0]
    users, relevant = _relevant(spec, rows)
    metric, k = RETRIEVAL_METRICS[primary.name], metric_k([primary])

    def score(model: FactorModel) -> float:
        return metric(model.recommend(users, k)[0], relevant, **primary.params)

    return score


def tune_model(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    train: pd.DataFrame,
    valid: pd.DataFrame,
) -> dict[str, Any]:
    """Ray Tune over the spec's space: fit on the training span, score on the validation span."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    result = search_recommender(
        spec.model.family,
        spec.model.params,
        spec.model.search_space,
        _interactions(spec, train),
        _scorer(spec, valid),
        higher_is_better=spec.metrics[0].higher_is_better,
        seed=params.seed,
        tune_params=params.tune,
        ray_params=RayParams.model_validate(as_dict(ray)),
    )
    return tuning_report(spec.metrics[0].name, result)


def _fit(
    spec: ProblemSpec,
    model: ModelSpec,
    params: dict[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    rows: pd.DataFrame,
) -> tuple[FactorModel, dict[str, Any]]:
    seed = TrainingParams.model_validate(as_dict(training)).seed
    data = _interactions(spec, rows)
    fit = fit_recommender_on_ray(
        model.family, params, data, seed=seed, ray_params=RayParams.model_validate(as_dict(ray))
    )
    return fit.model, fit_report(model, params, rows, fit, users=len(data.user_ids), items=len(data.item_ids))


_fit_model, fit_baseline = fit_nodes(_fit)


def fit_model(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    train: pd.DataFrame,
    valid: pd.DataFrame,
    tuning: Mapping[str, Any],
) -> tuple[FactorModel | TwoStageModel, dict[str, Any]]:
    """Refit the spec's model with the best parameters on train + validation (a Ray task); a
    two-stage spec adds its ranker (:func:`_fit_two_stage`)."""
    spec = spec_from_mapping(problem)
    if spec.retrieval is None:
        return _fit_model(problem, training, ray, train, valid, tuning)
    return _fit_two_stage(spec, dict(tuning["best_params"]), training, ray, train, valid)


def _stage_columns(spec: ProblemSpec) -> StageColumns:
    assert spec.retrieval is not None
    user, item, label = event_keys(spec)
    return StageColumns(user, item, spec.retrieval.interaction, label, tuple(spec.retrieval.item_columns))


def _fit_two_stage(
    spec: ProblemSpec,
    best: dict[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    train: pd.DataFrame,
    valid: pd.DataFrame,
) -> tuple[TwoStageModel, dict[str, Any]]:
    """The ranker learns on the candidates of a retriever fitted on the training span, labelled by
    the validation span (what it will face when served); the served retriever is then refitted on
    train + validation, with its feature tables, and paired with that ranker."""
    assert spec.retrieval is not None
    params = TrainingParams.model_validate(as_dict(training))
    cols, n = _stage_columns(spec), spec.retrieval.candidates
    early, _ = _fit(spec, spec.model, best, training, ray, train)
    x, y = ranker_training_rows(early, feature_tables(early, train, cols), cols, n, valid)
    ranker_spec = spec.retrieval.ranker
    inputs = [ModelInput(name=name, dtype="float32") for name in cols.feature_names()]
    start = time.perf_counter()
    ranker = get_family(ranker_spec.family).build(inputs, ranker_spec.params, params.seed, 1).fit(x, y)
    ranker_s = round(time.perf_counter() - start, 3)
    rows = pd.concat([train, valid])
    retriever, report = _fit(spec, spec.model, best, training, ray, rows)
    model = TwoStageModel(retriever, feature_tables(retriever, rows, cols), ranker, cols, n)
    report["ranker"] = {
        "family": ranker_spec.family,
        "params": ranker_spec.params,
        "rows": len(y),
        "positives": int(y.sum()),
        "features": cols.feature_names(),
        "fit_s": ranker_s,
    }
    return model, report


def true_relevance(
    spec: ProblemSpec, generator: Mapping[str, Any], keys: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """The generator's truth for every (request key, item), ``[keys, items]`` (NaN: unknown): the
    problem module's ``true_rates`` (a key is a user id, or a query text for text retrieval).

    Raises:
        SpecError: the problem module cannot recompute its truth.
    """
    true_rates = getattr(load_problem(spec), "true_rates", None)
    if not callable(true_rates):
        raise SpecError(
            f"{spec.problem_module} has no true_rates(spec, params, keys, item_ids); "
            "a retrieval problem needs it for the oracle"
        )
    return np.asarray(true_rates(spec, as_dict(generator), keys, items), dtype=np.float64)


def _oracle(
    spec: ProblemSpec, generator: Mapping[str, Any], users: np.ndarray, items: np.ndarray, k: int
) -> np.ndarray:
    """Each user's top k of ``items`` by the generator's true rate."""
    rates = np.nan_to_num(true_relevance(spec, generator, users, items), nan=-np.inf)
    return items[np.argsort(-rates, axis=1, kind="stable")[:, :k]]


def evaluate_models(
    problem: Mapping[str, Any],
    model: FactorModel | TwoStageModel,
    baseline: FactorModel,
    holdout: pd.DataFrame,
    split: Mapping[str, Any],
    generator: Mapping[str, Any],
) -> tuple[dict[str, Any], str, bytes, bytes]:
    """Ranked lists of model, baseline and oracle for every holdout user, against what each played.

    Oracle items are every item of the world (the generator's), so an item the model never saw in
    training can still be relevant. ROC and calibration curves do not apply to ranked lists: the
    two figure outputs are empty files and the report says so.
    """
    spec = spec_from_mapping(problem)
    users, relevant = _relevant(spec, holdout)
    k = metric_k(spec.metrics)
    items = np.union1d(model.item_ids_, holdout[event_keys(spec)[1]].to_numpy(dtype=np.int64))
    final = [m for m in spec.metrics if m.stage is None]
    k = metric_k(final) if final else k
    ranked = {
        "model": model.recommend(users, k)[0],
        "baseline": baseline.recommend(users, k)[0],
        "oracle": _oracle(spec, generator, users, items, k),
    }
    candidates = None
    if isinstance(model, TwoStageModel):
        # Stage 1 on its own: the model's candidates, as many of the baseline's and the oracle's.
        n = metric_k([m for m in spec.metrics if m.stage is not None])
        candidates = {
            "model": model.candidates(users)[0],
            "baseline": baseline.recommend(users, n)[0],
            "oracle": _oracle(spec, generator, users, items, n),
        }
    info = {"start": split["holdout_start"], "end": holdout[spec.label.timestamp].max().isoformat()}
    report = retrieval_report(spec.metrics, relevant, ranked, holdout=info, candidates=candidates)
    markdown = render_markdown(report, figures={})
    note = "\nROC and calibration curves do not apply to ranked lists; their figure files are empty.\n"
    return report, markdown + note, b"", b""


def export_model(problem: Mapping[str, Any], model: FactorModel | TwoStageModel) -> bytes:
    """The recommender as one ONNX graph: user id -> top ``serving.top_k`` items and scores (both
    stages in the graph for a two-stage model, so they are registered and rolled out as one)."""
    spec = spec_from_mapping(problem)
    key = spec.serving.routing_key
    meta = {"spec_hash": spec_hash(spec), "inputs": key, "top_k": str(spec.serving.top_k)}
    k = spec.serving.top_k or 10
    if isinstance(model, TwoStageModel):
        graph = two_stage_to_onnx(model, k, key, metadata=meta, name=spec.name)
    else:
        graph = retrieval_to_onnx(model, k, key, metadata=meta, name=spec.name)
    return bytes(graph.SerializeToString())


def check_parity(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    candidate: bytes,
    model: FactorModel | TwoStageModel,
    parity_rows: pd.DataFrame,
) -> dict[str, Any]:
    """ONNX Runtime's top k against the native model's for the parity users (report only)."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    users = parity_rows[spec.serving.routing_key].to_numpy(dtype=np.int64)
    return retrieval_parity(
        candidate, model, users, spec.serving.top_k or 10, tolerance=params.parity_tolerance
    )


def reference_sample(
    problem: Mapping[str, Any],
    monitoring: Mapping[str, Any],
    registry: Mapping[str, Any],
    training_set: pd.DataFrame,
) -> pd.DataFrame:
    """A seeded sample of the training set's latest span: the drift columns and, as the
    prediction, the stable model's top score for the row's user (what the server logs as score)."""
    from mlsd.pipelines.monitoring import stable_graph

    spec, params = spec_from_mapping(problem), DriftParams.model_validate(as_dict(monitoring))
    ts = training_set[spec.label.timestamp]
    recent = training_set[ts >= ts.max() - params.reference_span]
    rows = recent.sample(min(params.reference_rows, len(recent)), random_state=params.seed)
    frame = rows[list(spec.drift.columns)].astype(np.float32)
    key = spec.serving.routing_key
    _, scores = session(stable_graph(problem, registry)).run(None, retrieval_feeds(rows[key].to_numpy(), key))
    frame[PREDICTION] = np.asarray(scores)[:, 0].astype(np.float64)
    return frame.reset_index(drop=True)


NODES = {
    fn.__name__: fn
    for fn in (
        split_training_set,
        tune_model,
        fit_model,
        fit_baseline,
        evaluate_models,
        export_model,
        check_parity,
        reference_sample,
    )
}
"""The retrieval version of each node that differs (mlsd.pipelines.by_task)."""
