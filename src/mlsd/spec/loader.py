"""Load a :class:`ProblemSpec` from YAML or a mapping, with errors that name the field."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlsd.errors import SpecError
from mlsd.spec.schema import ProblemSpec

SPEC_KEY = "problem"


def _format(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  - {where}: {item['msg']}")
    return f"Invalid problem spec in {source}:\n" + "\n".join(lines)


def spec_from_mapping(data: Mapping[str, Any], source: str = "parameters") -> ProblemSpec:
    """Validate a mapping (the value under ``problem:``) as a spec.

    Raises:
        SpecError: naming every invalid field and why.
    """
    if isinstance(data, ProblemSpec):
        return data
    if not isinstance(data, Mapping):
        raise SpecError(f"Invalid problem spec in {source}: expected a mapping, got {type(data).__name__}")
    try:
        return ProblemSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(_format(exc, source)) from None


def load_spec(path: str | Path) -> ProblemSpec:
    """Read a spec file whose top-level key is ``problem:`` (as in conf/base/problem.yml).

    Raises:
        SpecError: if the file is missing, is not YAML, lacks the ``problem`` key, or is invalid.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"Problem spec {path} does not exist; render a project or pass its path.") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"Problem spec {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping) or SPEC_KEY not in raw:
        raise SpecError(f"Problem spec {path} must have a top-level '{SPEC_KEY}:' key.")
    return spec_from_mapping(raw[SPEC_KEY], source=str(path))


def spec_hash(spec: ProblemSpec) -> str:
    """A stable fingerprint of the spec (recorded with models and registries).

    Keys keep their spec order (no sorting): the order of feature fields is the model's input
    order, so reordering them must change the hash. The ``design`` prose is left out: rewording
    the design document does not change what a model was trained for. An absent ``uplift`` block
    is left out too, so specs written before the block existed keep their hash.
    """
    exclude = {"design"} if spec.uplift is not None else {"design", "uplift"}
    blob = json.dumps(spec.model_dump(mode="json", exclude=exclude)).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
