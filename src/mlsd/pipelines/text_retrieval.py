"""The train and monitoring nodes of a text retrieval problem (a retrieval spec with ``text_retrieval``).

Same datasets and names as every task's nodes (mlsd.pipelines.by_task picks these). The events
are search results: one row per (search, shown item), the search's query, the item's text and
ranker features (point-in-time), and the label (a click). The index holds every item of the
span's rows with its latest text and features; the ranker learns from the span's (query, item,
click) rows. Evaluation ranks the whole index for each holdout search with a click and compares
the list with the clicked items; the oracle ranks every item by the generator's true relevance
(the problem module's ``true_rates(spec, params, queries, item_ids)``). With
``text_retrieval.escalation`` (answer or escalate), every model also fits an escalation head and
the holdout judges its decisions too: a search with no relevant item is one a person must handle.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from mlsd.evaluation import (
    RETRIEVAL_METRICS,
    check_retrieval_metrics,
    metric_k,
    render_markdown,
    retrieval_report,
)
from mlsd.export import session, text_feeds, text_retrieval_parity, text_retrieval_to_onnx
from mlsd.export.retrieval_graph import SCORES_OUTPUT
from mlsd.monitoring.drift import PREDICTION, DriftParams
from mlsd.pipelines import as_dict
from mlsd.pipelines.fitting import fit_nodes, fit_report, tuning_report
from mlsd.pipelines.retrieval import event_keys, true_relevance
from mlsd.spec import ModelSpec, ProblemSpec, spec_from_mapping, spec_hash
from mlsd.training import (
    Documents,
    Judgments,
    RayParams,
    TextRetriever,
    TrainingParams,
    build_text_retriever,
    fingerprint,
    fit_ranker_on_ray,
    search_ranker,
    time_split,
)


def _query(spec: ProblemSpec) -> str:
    assert spec.text_retrieval is not None  # by_task sends only text retrieval specs here
    return spec.text_retrieval.query


def _factory(spec: ProblemSpec, model: ModelSpec, seed: int) -> Any:
    """``params -> unfitted TextRetriever`` of ``model`` (a ranker when it reads document features)."""
    assert spec.text_retrieval is not None
    query = spec.serving.context[spec.text_retrieval.query]
    return partial(
        build_text_retriever,
        family=model.family,
        text=query.text,
        candidates=spec.text_retrieval.candidates,
        features=len(spec.ranker_features(model)),
        seed=seed,
        escalation=spec.text_retrieval.escalation is not None,
    )


def _data(spec: ProblemSpec, model: ModelSpec, rows: pd.DataFrame) -> tuple[Documents, Judgments]:
    """The index (each item's latest text and features in ``rows``) and the judged rows."""
    assert spec.text_retrieval is not None
    _, item, label = event_keys(spec)
    features = spec.ranker_features(model)
    latest = rows.sort_values(spec.label.timestamp, kind="stable").drop_duplicates(item, keep="last")
    latest = latest.sort_values(item)
    documents = Documents(
        ids=latest[item].to_numpy(np.int64),
        texts=latest[spec.text_retrieval.document_text].to_numpy(object),
        features=latest[features].to_numpy(np.float32),
    )
    judged = Judgments(
        queries=rows[_query(spec)].to_numpy(object),
        doc_ids=rows[item].to_numpy(np.int64),
        labels=(rows[label] > 0).to_numpy(np.int64),
        groups=rows[spec.label.group].to_numpy(),
    )
    return documents, judged


def _searches(spec: ProblemSpec, rows: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each search's query and the items clicked in it (searches without a click are left out)."""
    _, item, label = event_keys(spec)
    group = spec.label.group
    clicked = rows[rows[label] > 0].groupby(group)[item].unique()
    queries = rows.drop_duplicates(group).set_index(group)[_query(spec)].reindex(clicked.index)
    return queries.to_numpy(object), [np.asarray(v, dtype=np.int64) for v in clicked]


def split_training_set(
    problem: Mapping[str, Any], training: Mapping[str, Any], training_set: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Train / validation / holdout by time, and the queries the ONNX parity check ranks (holdout
    queries, then an empty one and one of unknown words: every score is then the ranker's prior)."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    assert spec.text_retrieval is not None
    check_retrieval_metrics(spec.metrics, decisions=spec.text_retrieval.escalation is not None)
    split = time_split(training_set, spec.label.timestamp, params.holdout, params.validation)
    known = pd.unique(pd.concat([split.holdout, split.train])[_query(spec)])
    queries = np.concatenate([known[: params.parity_rows], ["", "qqqzzz xxyyzz"]])
    report = {
        "fingerprint": fingerprint(training_set),
        "rows": {"train": len(split.train), "valid": len(split.valid), "holdout": len(split.holdout)},
        "valid_start": split.valid_start.isoformat(),
        "holdout_start": split.holdout_start.isoformat(),
        "parity_rows": len(queries),
    }
    return split.train, split.valid, split.holdout, pd.DataFrame({_query(spec): queries}), report


def tune_model(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    train: pd.DataFrame,
    valid: pd.DataFrame,
) -> dict[str, Any]:
    """Ray Tune over the spec's space: fit on the training span, score its primary metric on the
    validation span's searches."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    primary = spec.metrics[0]
    queries, relevant = _searches(spec, valid)
    metric, k = RETRIEVAL_METRICS[primary.name], metric_k([primary])

    def score(model: TextRetriever) -> float:
        return metric(model.recommend(queries, k)[0], relevant, **primary.params)

    result = search_ranker(
        _factory(spec, spec.model, params.seed),
        spec.model.params,
        spec.model.search_space,
        _data(spec, spec.model, train),
        score,
        higher_is_better=primary.higher_is_better,
        seed=params.seed,
        tune_params=params.tune,
        ray_params=RayParams.model_validate(as_dict(ray)),
    )
    return tuning_report(primary.name, result)


def _fit(
    spec: ProblemSpec,
    model: ModelSpec,
    params: dict[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    rows: pd.DataFrame,
) -> tuple[TextRetriever, dict[str, Any]]:
    seed = TrainingParams.model_validate(as_dict(training)).seed
    data = _data(spec, model, rows)
    fit = fit_ranker_on_ray(
        _factory(spec, model, seed), params, data, ray_params=RayParams.model_validate(as_dict(ray))
    )
    report = fit_report(
        model,
        params,
        rows,
        fit,
        documents=len(data[0].ids),
        vocabulary=int(fit.model.doc_matrix_.shape[1]),
        ranker_features=spec.ranker_features(model),
        ranker_weights=[float(w) for w in fit.model.weights_],
    )
    return fit.model, report


fit_model, fit_baseline = fit_nodes(_fit)


def evaluate_models(
    problem: Mapping[str, Any],
    model: TextRetriever,
    baseline: TextRetriever,
    holdout: pd.DataFrame,
    split: Mapping[str, Any],
    generator: Mapping[str, Any],
) -> tuple[dict[str, Any], str, bytes, bytes]:
    """Ranked lists of model, baseline and oracle for every holdout search, judged by the truth.

    An item is relevant to a search when the generator's true relevance to its query is at least
    ``text_retrieval.relevant_at`` (every item of the index and of the holdout is judged, shown
    or not); searches with no relevant item are left out. The oracle ranks by that truth, so its
    MRR is 1. With escalation, those searches stay for the decision metrics: a model answers when
    its ``answer_p`` is at least ``escalation.answer_at``; the oracle answers exactly the searches
    that have a relevant item. ROC and calibration curves do not apply to ranked lists (empty figure
    files).
    """
    spec = spec_from_mapping(problem)
    assert spec.text_retrieval is not None
    queries = holdout.drop_duplicates(spec.label.group)[_query(spec)].to_numpy(object)
    k = metric_k(spec.metrics)
    items = np.union1d(model.doc_ids_, holdout[event_keys(spec)[1]].to_numpy(dtype=np.int64))
    truth = np.nan_to_num(true_relevance(spec, generator, queries, items), nan=-np.inf)
    relevant = [items[row >= spec.text_retrieval.relevant_at] for row in truth]
    ranked = {
        "model": model.recommend(queries, k)[0],
        "baseline": baseline.recommend(queries, k)[0],
        "oracle": items[np.argsort(-truth, axis=1, kind="stable")[:, :k]],
    }
    info = {"start": split["holdout_start"], "end": holdout[spec.label.timestamp].max().isoformat()}
    escalation = spec.text_retrieval.escalation
    answered = None
    if escalation is not None:
        answered = {
            "model": model.answer_p(queries) >= escalation.answer_at,
            "baseline": baseline.answer_p(queries) >= escalation.answer_at,
            "oracle": np.array([len(r) > 0 for r in relevant]),
        }
        info = {**info, "queries": len(queries), "needing_a_person": int((~answered["oracle"]).sum())}
    report = retrieval_report(spec.metrics, relevant, ranked, holdout=info, answered=answered)
    report["holdout"]["searches"] = report["holdout"].pop("users")
    report["holdout"]["relevant_at"] = spec.text_retrieval.relevant_at
    markdown = render_markdown(report, figures={})
    note = "\nROC and calibration curves do not apply to ranked lists; their figure files are empty.\n"
    return report, markdown + note, b"", b""


def export_model(problem: Mapping[str, Any], model: TextRetriever) -> bytes:
    """The retriever and ranker as one ONNX graph: query text -> top ``serving.top_k`` items, scores."""
    spec = spec_from_mapping(problem)
    query = _query(spec)
    meta = {"spec_hash": spec_hash(spec), "inputs": query, "top_k": str(spec.serving.top_k)}
    graph = text_retrieval_to_onnx(model, spec.serving.top_k or 10, query, metadata=meta, name=spec.name)
    return bytes(graph.SerializeToString())


def check_parity(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    candidate: bytes,
    model: TextRetriever,
    parity_rows: pd.DataFrame,
) -> dict[str, Any]:
    """ONNX Runtime's top k against the native model's for the parity queries (report only)."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    query = _query(spec)
    queries = parity_rows[query].to_numpy(object)
    return text_retrieval_parity(
        candidate,
        model,
        queries,
        spec.serving.top_k or 10,
        tolerance=params.parity_tolerance,
        input_name=query,
    )


def reference_sample(
    problem: Mapping[str, Any],
    monitoring: Mapping[str, Any],
    registry: Mapping[str, Any],
    training_set: pd.DataFrame,
) -> pd.DataFrame:
    """A seeded sample of the latest span's searches (one row each): the drift columns (text kept as
    text) and, as the prediction, the stable model's top score for the query (what the server logs)."""
    from mlsd.pipelines.monitoring import stable_graph

    spec, params = spec_from_mapping(problem), DriftParams.model_validate(as_dict(monitoring))
    ts = training_set[spec.label.timestamp]
    recent = training_set[ts >= ts.max() - params.reference_span].drop_duplicates(spec.label.group)
    rows = recent.sample(min(params.reference_rows, len(recent)), random_state=params.seed)
    text = set(spec.text_inputs())
    frame = pd.DataFrame(
        {c: rows[c].astype(object if c in text else np.float32) for c in spec.drift.columns}
    ).reset_index(drop=True)
    query = _query(spec)
    feeds = text_feeds(rows[query].to_numpy(), query)
    (scores,) = session(stable_graph(problem, registry)).run([SCORES_OUTPUT], feeds)
    frame[PREDICTION] = np.asarray(scores)[:, 0].astype(np.float64)
    return frame


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
"""The text retrieval version of each node that differs (mlsd.pipelines.by_task)."""
