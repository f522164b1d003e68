"""Which models serve: the rollout file, sticky canary assignment, and reloads without a restart.

deployment/rollout.yaml names the stable tag (or leaves it to the registry's stable pointer), an
optional canary with a traffic percent, and optional shadows. The server re-reads it (and the
registry's pointer) in a background thread; a new rollout is built completely, every model
loaded and checked against the spec's inputs, before it replaces the running one. A rollout that
fails to build is reported and the running one keeps serving.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlsd.errors import MlsdError, RolloutError
from mlsd.registry import MODEL_FILE, ModelRegistry
from mlsd.serving import metrics
from mlsd.spec import ModelInput, ProblemSpec

log = logging.getLogger(__name__)

Variant = Literal["stable", "canary"]
SETTLE_S = 0.2
"""A rollout file younger than this is not reloaded by the watcher yet (``reload(force=True)``, what
``/rollout`` calls after a deliberate edit, reads it at once)."""
_ORT_TYPES = {"float32": "tensor(float)", "string": "tensor(string)", "int64": "tensor(int64)"}
_TASK_OUTPUTS = {"retrieval": ("items", "scores"), "uplift": ("uplift",), "multilabel": ("label_scores",)}


def served_outputs(spec: ProblemSpec) -> tuple[str, ...]:
    """The graph outputs a served model of ``spec``'s task must have (default: probabilities; an
    answer-or-escalate retrieval problem's also ``answer_p``)."""
    from mlsd.export import ANSWER_OUTPUT, SCORE_OUTPUT

    outputs = _TASK_OUTPUTS.get(spec.task, (SCORE_OUTPUT,))
    if spec.text_retrieval is not None and spec.text_retrieval.escalation is not None:
        outputs = (*outputs, ANSWER_OUTPUT)
    return outputs


class Canary(BaseModel):
    """A candidate that gets ``percent`` of routing keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: str = Field(min_length=1)
    percent: float = Field(ge=0, le=100)
    started: str | None = Field(default=None, description="UTC ISO time `mlsd rollout start` began it")


class Rollout(BaseModel):
    """deployment/rollout.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stable: str | None = Field(default=None, description="a registered tag; null: the registry's stable one")
    canary: Canary | None = None
    shadows: list[str] = Field(default_factory=list, description="tags scored off the response path")
    canary_timeout_ms: float = Field(default=50, gt=0, description="slower canary calls fall back to stable")
    salt: str = Field(default="", description="changes which keys land in the canary; default: its tag")

    @model_validator(mode="after")
    def _distinct(self) -> Rollout:
        tags = [t for t in (self.stable, self.canary and self.canary.tag) if t] + self.shadows
        if len(tags) != len(set(tags)):
            raise ValueError(f"a tag may play one part only (stable, canary or shadow); got {tags}")
        return self


def read_rollout(path: Path) -> Rollout:
    """Parse and validate a rollout file.

    Raises:
        RolloutError: the file is missing, not YAML, or has an invalid field (named).
    """
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RolloutError(f"{path}: cannot read the rollout file ({exc})") from exc
    try:
        return Rollout.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise RolloutError(f"{path}: {problems}") from exc


HEADER = (
    "# Which registered models serve (see the comments in the committed deployment/rollout.yaml).\n"
    "# Written by `mlsd rollout`; the server picks changes up within serving.reload_s.\n"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


_TOP_KEY = re.compile(r"^([A-Za-z_][\w-]*)[ \t]*:(.*)$")
_INLINE_COMMENT = re.compile(r"[ \t]+#.*$")


def _dump_key(key: str, value: Any, old_line: str) -> list[str]:
    """``key: value`` as YAML lines: the old line itself when it holds that value already, else
    the new value with the old line's ``# comment`` when it fits on one line."""
    try:
        if old_line and yaml.safe_load(old_line) == {key: value}:
            return [old_line]
    except yaml.YAMLError:
        pass  # a value over several lines: replaced
    lines = yaml.safe_dump({key: value}, sort_keys=False).splitlines()
    comment = _INLINE_COMMENT.search(old_line.partition(":")[2])
    if len(lines) == 1 and comment:
        lines[0] += comment[0]
    return lines


def render_rollout(text: str, values: dict[str, Any]) -> str:
    """``text`` (a rollout file) with each top-level key's value replaced by ``values``', every
    comment and blank line kept where it was; keys the file lacks are appended. Without anything
    to keep (no file, or one that would not round-trip) it is :data:`HEADER` and the values."""
    fresh = HEADER + yaml.safe_dump(values, sort_keys=False)
    if not text.strip():
        return fresh
    out: list[str] = []
    pending: list[str] = []  # blank lines inside a value being replaced, kept if the value ends
    replacing, done = False, set()
    for line in text.splitlines():
        if replacing and (not line.strip() or line[0] in " \t-"):
            # the old value's continuation (indented, or a sequence at column 0); blanks wait
            if not line.strip():
                pending.append(line)
            else:
                pending.clear()
            continue
        replacing = False
        out += pending
        pending.clear()
        match = _TOP_KEY.match(line)
        if match and match[1] in values and match[1] not in done:
            out += _dump_key(match[1], values[match[1]], line)
            replacing = True
            done.add(match[1])
            continue
        out.append(line)
    out += pending
    for key, value in values.items():
        if key not in done:
            out += _dump_key(key, value, "")
    rendered = "\n".join(out) + "\n"
    try:
        same = yaml.safe_load(rendered) == values
    except yaml.YAMLError:
        same = False
    return rendered if same else fresh


def write_rollout(path: Path, rollout: Rollout) -> None:
    """Replace the rollout file atomically (a server never reads half a file), keeping its
    comments: only the values change (:func:`render_rollout`)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_rollout(text, rollout.model_dump(mode="json")))
    os.replace(tmp, path)


def start_canary(
    path: Path,
    registry: ModelRegistry,
    inputs: list[ModelInput],
    tag: str,
    percent: float,
    outputs: tuple[str, ...] | None = None,
) -> Rollout:
    """Send ``percent`` of routing keys to ``tag`` (checked to load and take the spec's inputs).

    Raises:
        RolloutError: the tag cannot serve, is the stable one, or the file is invalid.
    """
    current = read_rollout(path)
    if tag == (current.stable or registry.stable()):
        raise RolloutError(f"{tag} is the stable model; a canary must be another version")
    load_model(registry, tag, inputs, threads=1, outputs=outputs)
    try:
        rollout = Rollout.model_validate(
            {
                **current.model_dump(),
                "canary": {"tag": tag, "percent": percent, "started": _now()},
                "shadows": [s for s in current.shadows if s != tag],
            }
        )
    except ValidationError as exc:
        raise RolloutError(f"canary {tag} at {percent}%: {exc.errors()[0]['msg']}") from exc
    write_rollout(path, rollout)
    return rollout


def promote_canary(path: Path, registry: ModelRegistry, reason: str) -> Rollout:
    """Make the canary the stable model: the registry's pointer moves to it and the file drops the
    canary (an explicit ``stable`` tag in the file is replaced by the canary's).

    Raises:
        RolloutError: there is no canary to promote.
    """
    current = read_rollout(path)
    if current.canary is None:
        raise RolloutError(f"{path}: no canary to promote")
    try:
        registry.promote(current.canary.tag, reason=reason)
    except MlsdError as exc:
        raise RolloutError(str(exc)) from exc
    stable = None if current.stable is None else current.canary.tag
    rollout = current.model_copy(update={"stable": stable, "canary": None})
    write_rollout(path, rollout)
    return rollout


def rollback_canary(path: Path) -> Rollout:
    """Stop the canary: every key goes back to stable.

    Raises:
        RolloutError: there is no canary to roll back.
    """
    current = read_rollout(path)
    if current.canary is None:
        raise RolloutError(f"{path}: no canary to roll back")
    rollout = current.model_copy(update={"canary": None})
    write_rollout(path, rollout)
    return rollout


def bucket(key: Any, salt: str) -> float:
    """A routing key's position in [0, 100): a hash, so the same key always lands in the same place
    (in every worker and after restarts, unlike Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 / 100


@dataclass(frozen=True)
class ServedModel:
    """A registered ONNX model loaded into an ONNX Runtime session."""

    tag: str
    session: Any
    output: str

    def score(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The score per row: P(label = 1), or an uplift graph's effect (``score_column``); a
        multi-label graph's ``[N, classes]`` scores whole."""
        from mlsd.export import MULTILABEL_OUTPUT, score_column

        (values,) = self.session.run([self.output], feeds)
        return (
            np.asarray(values, dtype=np.float64) if self.output == MULTILABEL_OUTPUT else score_column(values)
        )


def load_model(
    registry: ModelRegistry,
    tag: str,
    inputs: list[ModelInput],
    threads: int,
    outputs: tuple[str, ...] | None = None,
) -> ServedModel:
    """Load ``tag`` and check that its graph takes exactly the spec's inputs, in order, and has
    ``outputs`` (default: the probabilities output of a classifier).

    Raises:
        RolloutError: the tag is not registered, has no model file, does not load, or its inputs
            differ from the spec's (named).
    """
    from mlsd.export import SCORE_OUTPUT, session

    try:
        version = registry.get(tag)
    except MlsdError as exc:
        raise RolloutError(str(exc)) from exc
    path = version.path / MODEL_FILE
    try:
        sess = session(path.read_bytes(), threads=threads)
    except Exception as exc:  # ORT raises its own exception types
        raise RolloutError(f"{tag}: {path} does not load in ONNX Runtime ({exc})") from exc
    got = [(i.name, i.type) for i in sess.get_inputs()]
    want = [(i.name, _ORT_TYPES[i.dtype]) for i in inputs]
    if got != want:
        pairs = enumerate(zip(got, want, strict=False))
        diff = next((f"input {k}: {g} != spec {w}" for k, (g, w) in pairs if g != w), "")
        detail = diff or f"{len(got)} inputs, the spec has {len(want)}"
        raise RolloutError(f"{tag}: its graph inputs do not match the spec's model inputs ({detail})")
    outputs = outputs or (SCORE_OUTPUT,)
    lacking = [name for name in outputs if name not in [o.name for o in sess.get_outputs()]]
    if lacking:
        raise RolloutError(f"{tag}: the graph has no {lacking[0]!r} output")
    return ServedModel(tag=tag, session=sess, output=outputs[0])


@dataclass(frozen=True)
class ActiveRollout:
    """The models serving now, built from one version of the rollout file."""

    config: Rollout
    stable: ServedModel
    canary: ServedModel | None
    shadows: tuple[ServedModel, ...]

    def variant(self, key: Any) -> Variant:
        """stable or canary for a routing key (sticky: a pure function of the key and salt)."""
        canary = self.config.canary
        if self.canary is None or canary is None or canary.percent <= 0:
            return "stable"
        return "canary" if bucket(key, self.config.salt or canary.tag) < canary.percent else "stable"

    @property
    def canary_percent(self) -> float:
        return 0.0 if self.canary is None or self.config.canary is None else self.config.canary.percent

    def describe(self) -> dict[str, Any]:
        return {
            "stable": self.stable.tag,
            "canary": None
            if self.canary is None
            else {"tag": self.canary.tag, "percent": self.canary_percent},
            "shadows": [s.tag for s in self.shadows],
            "canary_timeout_ms": self.config.canary_timeout_ms,
        }


class RolloutManager:
    """Holds the active rollout and rebuilds it when the rollout file or the stable pointer changes.

    Args:
        path: the rollout file.
        registry: where the tags are registered.
        inputs: the spec's model inputs (every model must take exactly these).
        threads: ONNX Runtime threads per session.
        outputs: the graph outputs every model must have (default: probabilities).
    """

    def __init__(
        self,
        path: Path,
        registry: ModelRegistry,
        inputs: list[ModelInput],
        threads: int = 1,
        outputs: tuple[str, ...] | None = None,
    ) -> None:
        self.path, self.registry, self.inputs, self.threads = path, registry, inputs, threads
        self.outputs = outputs
        self._models: dict[str, ServedModel] = {}
        self._stamp: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.active = self._build()
        metrics.CANARY_PERCENT.set(self.active.canary_percent)

    def _pointer(self) -> str | None:
        try:
            return self.registry.stable()
        except MlsdError as exc:
            raise RolloutError(f"cannot read the registry's stable pointer: {exc}") from exc

    def _file_stamp(self) -> tuple[Any, ...]:
        try:
            stat = self.path.stat()
        except OSError:
            return ("missing",)
        return (stat.st_mtime_ns, stat.st_size)

    def _settling(self) -> bool:
        """Whether the file changed in the last :data:`SETTLE_S`: a writer may be halfway (an
        emptied file reads as the defaults), so the watcher leaves it for its next poll."""
        try:
            return time.time() - self.path.stat().st_mtime < SETTLE_S
        except OSError:
            return False

    def _signature(self) -> tuple[Any, ...]:
        """What a rebuild depends on: the file's mtime and size, and the stable pointer."""
        try:
            pointer = self._pointer()
        except RolloutError as exc:
            pointer = f"unreadable: {exc}"
        return (*self._file_stamp(), pointer)

    def _model(self, tag: str) -> ServedModel:
        if tag not in self._models:
            self._models[tag] = load_model(self.registry, tag, self.inputs, self.threads, self.outputs)
        return self._models[tag]

    def _build(self) -> ActiveRollout:
        file_stamp, pointer = self._file_stamp(), self._pointer()
        config = read_rollout(self.path)
        stable_tag = config.stable or pointer
        if stable_tag is None:
            raise RolloutError(
                f"{self.path}: no stable model: the file sets none and the registry at "
                f"{self.registry.home} has no stable version; run `kedro run` or `mlsd models promote TAG`"
            )
        if config.canary and config.canary.tag == stable_tag:
            raise RolloutError(f"{self.path}: canary.tag {stable_tag!r} is the stable model")
        active = ActiveRollout(
            config=config,
            stable=self._model(stable_tag),
            canary=self._model(config.canary.tag) if config.canary else None,
            shadows=tuple(self._model(tag) for tag in config.shadows if tag != stable_tag),
        )
        self._stamp = (*file_stamp, pointer)
        return active

    def reload(self, force: bool = False) -> bool:
        """Rebuild the rollout if its inputs changed (or ``force``); True when it was replaced.

        Outcomes are counted in ``mlsd_rollout_reloads_total{outcome}``.

        Raises:
            RolloutError: the new rollout is invalid; the active one is unchanged.
        """
        with self._lock:
            if not force and (self._signature() == self._stamp or self._settling()):
                return False
            try:
                self.active = self._build()
            except RolloutError as exc:
                self._stamp = self._signature()  # report a broken file once, not every poll
                metrics.RELOADS.labels("error").inc()
                log.error("rollout not reloaded, still serving %s: %s", self.active.describe(), exc)
                raise
            metrics.RELOADS.labels("ok").inc()
            metrics.CANARY_PERCENT.set(self.active.canary_percent)
            log.info("rollout reloaded: %s", self.active.describe())
            return True

    def watch(self, every_s: float) -> None:
        """Poll for changes every ``every_s`` seconds in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(every_s):
                with contextlib.suppress(RolloutError):  # counted and logged by reload
                    self.reload()

        self._thread = threading.Thread(target=loop, name="mlsd-rollout-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
