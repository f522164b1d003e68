"""The train pipeline's last step: an approved candidate becomes a registered version.

A candidate identical to a version already in the registry (the same ONNX bytes, spec hash and
training data fingerprint: a rerun of the same run) is not registered again; the run reports the
version that holds it. A second, different version for a canary needs a different model, for
example ``kedro run --pipelines train --params "training.seed=8"``.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlsd
from mlsd.export import signature
from mlsd.pipelines import as_dict
from mlsd.registry import ModelRegistry, RegistryParams
from mlsd.serving import ServingParams
from mlsd.serving.rollout import served_outputs, start_canary
from mlsd.spec import ProblemSpec, spec_from_mapping, spec_hash

log = logging.getLogger(__name__)


def _probability_response(spec: ProblemSpec) -> dict[str, Any]:
    return {"output": "probabilities", "column": 1}


def _ranked_response(spec: ProblemSpec) -> dict[str, Any]:
    return {"outputs": {"items": "int64 [N, k]", "scores": "float32 [N, k]"}, "k": spec.serving.top_k}


def _effect_response(spec: ProblemSpec) -> dict[str, Any]:
    return {"output": "uplift", "column": 0, "meaning": "P(label | treated) - P(label | control)"}


def _per_label_response(spec: ProblemSpec) -> dict[str, Any]:
    return {"output": "label_scores", "classes": list(spec.label.classes or ())}


RESPONSES = {"retrieval": _ranked_response, "uplift": _effect_response, "multilabel": _per_label_response}
"""What the registered graph answers, by task (registry metadata ``score``; default: probabilities)."""


def _code_version() -> dict[str, Any]:
    """mlsd's version and, when it runs from a git checkout, the commit and whether it is dirty."""
    src = Path(mlsd.__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"mlsd": mlsd.__version__, "git": "unknown", "dirty": False}
    return {"mlsd": mlsd.__version__, "git": sha, "dirty": bool(dirty)}


def _metadata(
    spec: ProblemSpec,
    approval: Mapping[str, Any],
    candidate: bytes,
    evaluation: Mapping[str, Any],
    parity: Mapping[str, Any],
    training_report: Mapping[str, Any],
    tuning: Mapping[str, Any],
    split: Mapping[str, Any],
) -> dict[str, Any]:
    import onnx

    return {
        "problem": spec.name,
        "spec_hash": spec_hash(spec),
        "metrics": evaluation["metrics"],
        "oracle_gap": evaluation["oracle_gap"]["model"],
        "gates": approval["gates"],
        **({"gate_overrides": approval["gate_overrides"]} if "gate_overrides" in approval else {}),
        "training_data": {"fingerprint": split["fingerprint"], "rows": split["rows"]},
        "inputs": [i.model_dump(exclude_none=True) for i in spec.model_input_schema()],
        "onnx": signature(onnx.load_from_string(candidate)),
        "score": RESPONSES.get(spec.task, _probability_response)(spec),
        "parity": {"rows": parity["rows"], "max_abs_diff": parity["max_abs_diff"]},
        "training": {
            "family": training_report["family"],
            "params": training_report["params"],
            "fit_wall_s": training_report["wall_s"],
            "tune_wall_s": tuning["wall_s"],
            "nodes": len(training_report["nodes"]),
        },
        "code_version": _code_version(),
    }


def register_model(
    problem: Mapping[str, Any],
    registry: Mapping[str, Any],
    serving: Mapping[str, Any],
    approval: Mapping[str, Any],
    candidate: bytes,
    evaluation: Mapping[str, Any],
    parity: Mapping[str, Any],
    training_report: Mapping[str, Any],
    tuning: Mapping[str, Any],
    split: Mapping[str, Any],
) -> dict[str, Any]:
    """Save the approved candidate as a new version; make it stable as ``registry.promote`` says,
    or, with ``registry.canary_percent``, start it as the canary of deployment/rollout.yaml.

    A candidate identical to a registered version is not saved again: the report names that
    version (``tag``, ``registered: false``, ``duplicate_of``) and nothing is promoted or started.
    """
    spec, params = spec_from_mapping(problem), RegistryParams.model_validate(as_dict(registry))
    store = ModelRegistry(params.home, spec.name)
    same = {"spec_hash": spec_hash(spec), "training_data.fingerprint": split["fingerprint"]}
    previous = store.stable()
    existing = store.find_identical(candidate, same)
    if existing is not None:
        log.warning(
            "register_model: the candidate is identical to %s (same ONNX bytes, spec hash and training "
            "data fingerprint); not registering it again. For a second version train a different model, "
            'e.g. kedro run --pipelines train --params "training.seed=<another seed>"',
            existing.tag,
        )
        return {
            "tag": existing.tag,
            "registered": False,
            "duplicate_of": existing.tag,
            "stable": previous,
            "previous_stable": previous,
            "canary": None,
            "home": str(store.home),
        }
    metadata = _metadata(spec, approval, candidate, evaluation, parity, training_report, tuning, split)
    labels = {"problem": spec.name, "family": training_report["family"]}
    tag = store.register(candidate, metadata, labels)
    log.info("register_model: registered %s in %s", tag, store.home)
    if params.promote == "always" or (params.promote == "first" and previous is None):
        store.promote(tag, reason=f"registered with registry.promote={params.promote}")
    canary = None
    if params.canary_percent is not None and store.stable() != tag:
        rollout_file = Path(ServingParams.model_validate(as_dict(serving)).rollout_file)
        start_canary(
            rollout_file, store, spec.model_input_schema(), tag, params.canary_percent, served_outputs(spec)
        )
        canary = {"tag": tag, "percent": params.canary_percent, "rollout_file": str(rollout_file)}
    return {
        "tag": tag,
        "registered": True,
        "stable": store.stable(),
        "previous_stable": previous,
        "canary": canary,
        "home": str(store.home),
    }
