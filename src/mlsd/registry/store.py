"""The model registry: ONNX models in a BentoML model store, plus which version is stable.

Versions are immutable: BentoML gives every save a new version and mlsd never writes into an
existing one. Which version serves as *stable* is a small JSON file beside the store
(``<home>/stable.json``), replaced atomically, with the history of promotions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlsd.errors import RegistryError
from mlsd.telemetry import telemetry_off

MODEL_FILE = "model.onnx"


class RegistryParams(BaseModel):
    """conf ``registry:``: where the store is and when a newly registered model becomes stable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: str = Field(default="data/06_models/bentoml", description="the BentoML home of the project")
    promote: Literal["first", "always", "never"] = Field(
        default="first",
        description="first: only when nothing is stable yet (later ones wait for a canary); always; never",
    )
    canary_percent: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="start a newly registered, not stable version as a canary on this share of users",
    )


SIZE_KEY = "mlsd_model_bytes"
"""Metadata key of a version's model file size: BentoML copies a new version's files into the store
one by one, so a process killed mid-copy can leave a listed version with a short model file."""

DIGEST_KEY = "mlsd_model_sha256"
"""Metadata key of the SHA-256 of a version's model file (what :meth:`ModelRegistry.find_identical`
compares; versions registered before it was recorded are hashed from their file)."""

INTERNAL_KEYS = (SIZE_KEY, DIGEST_KEY)
"""Metadata the registry keeps for itself: left out of :attr:`ModelVersion.metadata`."""


def model_digest(onnx_bytes: bytes) -> str:
    """The SHA-256 hex digest of a model file's bytes."""
    return hashlib.sha256(onnx_bytes).hexdigest()


def _get_path(metadata: Mapping[str, Any], dotted: str) -> Any:
    """``metadata["a"]["b"]`` for ``"a.b"`` (None where a level is missing)."""
    value: Any = metadata
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _complete(path: Path, metadata: dict[str, Any]) -> bool:
    """Whether a stored version's model file has the size it was registered with (versions from
    before the size was recorded count as complete)."""
    expected = metadata.get(SIZE_KEY)
    if expected is None:
        return True
    try:
        return (path / MODEL_FILE).stat().st_size == int(expected)
    except OSError:
        return False


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as listed by :meth:`ModelRegistry.versions`."""

    tag: str
    created: str
    stable: bool
    metadata: dict[str, Any]
    path: Path


class ModelRegistry:
    """The registry of one problem's models under ``home`` (a BentoML home directory).

    Args:
        home: the BentoML home; models live in ``home/models`` (so ``BENTOML_HOME=home
            bentoml models list`` shows them too).
        name: the model name, one per problem.
    """

    def __init__(self, home: str | Path, name: str) -> None:
        self.home = Path(home).resolve()
        self.name = name
        self._digests: dict[str, str | None] = {}  # tag -> model file digest, as last listed

    def _store(self) -> Any:
        telemetry_off()
        from bentoml._internal.models.model import ModelStore

        (self.home / "models").mkdir(parents=True, exist_ok=True)
        return ModelStore(str(self.home / "models"))

    def register(self, onnx_bytes: bytes, metadata: dict[str, Any], labels: dict[str, str]) -> str:
        """Save a new version with ``model.onnx`` and its metadata; returns its tag ``name:version``.

        Raises:
            RegistryError: the bytes are not a loadable ONNX model.
        """
        import bentoml
        import onnx

        try:
            onnx.checker.check_model(onnx.load_from_string(onnx_bytes))
        except Exception as exc:  # onnx raises ValidationError / DecodeError
            raise RegistryError(f"refusing to register {self.name}: not a valid ONNX model ({exc})") from exc
        sized = {**metadata, DIGEST_KEY: model_digest(onnx_bytes), SIZE_KEY: len(onnx_bytes)}
        with bentoml.models.create(
            self.name, labels=labels, metadata=sized, _model_store=self._store()
        ) as model:
            Path(model.path_of(MODEL_FILE)).write_bytes(onnx_bytes)
        return str(model.tag)

    def find_identical(self, onnx_bytes: bytes, same: Mapping[str, Any]) -> ModelVersion | None:
        """The oldest version whose model file has exactly these bytes and whose metadata has the
        values of ``same`` (dotted keys, e.g. ``{"spec_hash": ..., "training_data.fingerprint": ...}``);
        None if there is none. A run that trains the same model again finds its first version here."""
        digest = model_digest(onnx_bytes)
        for version in self.versions():
            stored = self._digests.get(version.tag)
            if stored is None:  # registered before the digest was recorded: hash the file
                try:
                    stored = model_digest((version.path / MODEL_FILE).read_bytes())
                except OSError:
                    continue
            if stored == digest and all(_get_path(version.metadata, k) == v for k, v in same.items()):
                return version
        return None

    def _listed(self) -> list[Any]:
        """Every stored BentoML model of this name, complete or not."""
        from bentoml.exceptions import NotFound

        try:
            return list(self._store().list(self.name))
        except NotFound:
            return []

    def versions(self) -> list[ModelVersion]:
        """Every version of this model, oldest first; one whose model file is missing or shorter than
        registered (a registration cut off mid-copy) is left out: it could not serve."""
        stable = self.stable()
        listed = [m for m in self._listed() if _complete(Path(m.path), m.info.metadata)]
        self._digests = {str(m.tag): m.info.metadata.get(DIGEST_KEY) for m in listed}
        rows = [
            ModelVersion(
                tag=str(m.tag),
                created=m.info.creation_time.isoformat(),
                stable=str(m.tag) == stable,
                metadata={k: v for k, v in m.info.metadata.items() if k not in INTERNAL_KEYS},
                path=Path(m.path),
            )
            for m in listed
        ]
        return sorted(rows, key=lambda v: v.created)

    def get(self, tag: str) -> ModelVersion:
        """One version by tag.

        Raises:
            RegistryError: there is no such version (the message lists the ones there are), or its
                model file is missing or short.
        """
        versions = self.versions()
        for version in versions:
            if version.tag == tag:
                return version
        if any(str(m.tag) == tag for m in self._listed()):
            raise RegistryError(
                f"model {tag!r} in {self.home}: its {MODEL_FILE} is missing or shorter than registered "
                "(a registration cut off mid-copy, or an edited store); register the model again"
            )
        known = [v.tag for v in versions] or "none"
        raise RegistryError(f"no model {tag!r} in {self.home}; registered versions: {known}")

    def stable(self) -> str | None:
        """The tag of the stable version, or None before the first promotion."""
        entry = self._pointers().get(self.name)
        return None if entry is None else str(entry["tag"])

    def history(self) -> list[dict[str, str]]:
        """Every promotion of this model, oldest first."""
        entry = self._pointers().get(self.name)
        return [] if entry is None else list(entry["history"])

    def promote(self, tag: str, reason: str) -> None:
        """Mark ``tag`` stable (it must exist and hold a model file).

        Raises:
            RegistryError: the version does not exist or has no ``model.onnx``.
        """
        version = self.get(tag)
        if not (version.path / MODEL_FILE).is_file():
            raise RegistryError(f"{tag} has no {MODEL_FILE}; it cannot serve")
        pointers = self._pointers()
        history = [] if self.name not in pointers else pointers[self.name]["history"]
        now = datetime.now(UTC).isoformat(timespec="seconds")
        history.append({"tag": tag, "at": now, "reason": reason})
        pointers[self.name] = {"tag": tag, "history": history}
        self._write_pointers(pointers)

    def _pointers(self) -> dict[str, Any]:
        path = self.home / "stable.json"
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path} is not valid JSON ({exc}); restore it or promote again") from exc
        valid = isinstance(data, dict) and all(
            isinstance(e, dict) and isinstance(e.get("tag"), str) and isinstance(e.get("history"), list)
            for e in data.values()
        )
        if not valid:
            raise RegistryError(
                f"{path} is not a stable-pointer file ({{name: {{tag, history}}}}); "
                "restore it or promote again"
            )
        return dict(data)

    def _write_pointers(self, pointers: dict[str, Any]) -> None:
        path = self.home / "stable.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(pointers, indent=2) + "\n")
        os.replace(tmp, path)
