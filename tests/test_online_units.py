"""Online feature reads in process, against a stand-in Feast provider: stored values in the model's
order, and every way a value goes missing (unknown entity, expired, null, store down, slow, failing)
gives the spec default, names the reason, counts it, and leaves the store alone for ``retry_s``.
tests/test_serving.py and tests/test_faults.py run the real stores behind a real server (slow)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Feast costs seconds to import and online.py imports its protos inside OnlineFeatures: imported
# here, once, each test stays fast (and `make mutation`'s forked test runs share the import).
import feast  # noqa: F401
import pytest
from feast.protos.feast.types.Value_pb2 import Null, Value

from mlsd.errors import FeatureStoreError
from mlsd.serving import online
from mlsd.serving.online import OnlineFeatures
from mlsd.spec import load_spec

SPEC = load_spec(Path(__file__).resolve().parents[1] / "conf" / "base" / "problem.yml")
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
FRESH = NOW - timedelta(hours=1)
ROW = {"user_id": 1, "ad_id": 10, "category": "auto"}
DEFAULTS = {name: col.default for name, col in SPEC.feature_fields().items()}


def _stored() -> dict[str, dict[tuple[Any, ...], tuple[datetime | None, dict[str, Value] | None]]]:
    """What the stand-in store holds per view: entity key -> (timestamp, values)."""
    return {
        "user_profile": {
            (1,): (
                NOW - timedelta(days=400),
                {
                    "age": Value(int64_val=52),
                    "country": Value(string_val="DE"),
                    "device": Value(string_val="ios"),
                },
            )
        },
        "user_ctr": {
            (1,): (
                FRESH,
                {
                    "user_imps_1d": Value(int64_val=40),
                    "user_ctr_1d": Value(float_val=0.5),
                    "user_imps_7d": Value(int64_val=300),
                    "user_ctr_7d": Value(float_val=0.25),
                },
            )
        },
        "ad_ctr": {
            (10,): (
                FRESH,
                {
                    "ad_imps_1d": Value(int64_val=7),
                    "ad_ctr_1d": Value(float_val=0.125),
                    "ad_imps_7d": Value(),
                    "ad_ctr_7d": Value(float_val=0.5),
                },
            )
        },
        "user_category_ctr": {
            (1, "auto"): (
                NOW - timedelta(days=1),
                {
                    "uc_imps_1d": Value(int64_val=3),
                    "uc_ctr_1d": Value(float_val=0.75),
                    "uc_imps_7d": Value(int64_val=9),
                    "uc_ctr_7d": Value(float_val=0.5),
                },
            )
        },
    }


def _key(value: Value) -> Any:
    return getattr(value, str(value.WhichOneof("val")))


class _Provider:
    """Feast's provider API as OnlineFeatures calls it: ``online_read`` per view, recorded; it may
    raise ``error`` or wait for ``gate`` first."""

    def __init__(self) -> None:
        self.stored = _stored()
        self.reads: list[tuple[str, list[tuple[Any, ...]], list[str]]] = []
        self.error: Exception | None = None
        self.gate: threading.Event | None = None
        self.seen: list[tuple[Any, str, list[list[str]]]] = []

    def online_read(
        self, config: Any, table: Any, entity_keys: list[Any], requested_features: list[str]
    ) -> list[Any]:
        keys = [tuple(_key(v) for v in k.entity_values) for k in entity_keys]
        self.reads.append((table.name, keys, requested_features))
        self.seen.append((config, threading.current_thread().name, [list(k.join_keys) for k in entity_keys]))
        if self.gate is not None:
            self.gate.wait(10)
        if self.error is not None:
            raise self.error
        return [self.stored[table.name].get(key, (None, None)) for key in keys]


def _store(provider: _Provider, missing_view: str | None = None) -> Any:
    def get_feature_view(name: str) -> Any:
        if name == missing_view:
            raise KeyError(name)
        return SimpleNamespace(name=name)

    return SimpleNamespace(
        project="units",
        config=SimpleNamespace(online_store=SimpleNamespace(type="sqlite")),
        _get_provider=lambda: provider,
        get_feature_view=get_feature_view,
    )


class _Clock:
    """``online.time`` with a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(online, "time", fake)
    return fake


def _errors(kind: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("mlsd_online_store_errors_total", {"kind": kind}) or 0.0


def _reader(provider: _Provider, **kwargs: Any) -> OnlineFeatures:
    return OnlineFeatures(_store(provider), SPEC, **kwargs)


def test_stored_values_are_read_in_the_model_s_order_with_their_types() -> None:
    provider = _Provider()
    features = _reader(provider)
    try:
        got = features.read([ROW], now=NOW)
    finally:
        features.close()
    assert list(got.values) == list(SPEC.feature_fields())
    assert got.values["age"] == [52]
    assert got.values["country"] == ["DE"]
    assert got.values["user_ctr_1d"] == [0.5]
    assert got.values["uc_ctr_1d"] == [0.75]  # exactly one TTL old: still fresh
    assert got.values["ad_imps_7d"] == [0]  # a null value: the default, reason null
    assert got.missing == [["ad_imps_7d"]]
    assert got.reasons == {("ad_ctr", "null"): 1}
    # the warm-up read one made-up key per view, then the request one batched read per view
    assert [view for view, _, _ in provider.reads] == [fv.name for fv in SPEC.feature_views] * 2
    assert provider.reads[0][1] == [(0,)]
    assert provider.reads[3][1] == [(0, "")]
    assert provider.reads[-1] == (
        "user_category_ctr",
        [(1, "auto")],
        ["uc_imps_1d", "uc_ctr_1d", "uc_imps_7d", "uc_ctr_7d"],
    )


def test_an_unknown_entity_gets_every_default_of_its_views_and_one_reason_per_field() -> None:
    features = _reader(_Provider())
    try:
        got = features.read([ROW, {"user_id": 2, "ad_id": 10, "category": "auto"}], now=NOW)
    finally:
        features.close()
    user_fields = [
        *SPEC.feature_views[0].fields,
        *SPEC.feature_views[1].fields,
        *SPEC.feature_views[3].fields,
    ]
    profile, ctr, _, category = (list(fv.fields) for fv in SPEC.feature_views)
    assert got.missing[1] == [*profile, *ctr, "ad_imps_7d", *category]  # view by view, in spec order
    assert {name: got.values[name][1] for name in user_fields} == {
        name: DEFAULTS[name] for name in user_fields
    }
    assert got.values["ad_ctr_1d"] == [0.125, 0.125]
    assert got.reasons == {
        ("user_profile", "unknown"): 3,
        ("user_ctr", "unknown"): 4,
        ("user_category_ctr", "unknown"): 4,
        ("ad_ctr", "null"): 2,
    }


def test_a_value_older_than_its_view_s_ttl_is_expired_and_a_view_without_ttl_never_expires() -> None:
    features = _reader(_Provider())
    try:
        got = features.read([ROW], now=NOW + timedelta(microseconds=1))
    finally:
        features.close()
    # user_category_ctr's row is one day old plus a microsecond: past its 1-day TTL
    assert got.values["uc_ctr_1d"] == [DEFAULTS["uc_ctr_1d"]]
    assert got.reasons[("user_category_ctr", "expired")] == 4
    # user_profile has no TTL (0): a row from last year still serves
    assert got.values["age"] == [52]
    assert ("user_profile", "expired") not in got.reasons


@pytest.mark.parametrize(
    ("error", "kind"),
    [(ConnectionRefusedError("refused"), "unavailable"), (ValueError("corrupt row"), "error")],
)
def test_a_failing_store_gives_every_default_counts_once_and_is_left_alone_for_retry_s(
    error: Exception, kind: str, clock: _Clock, caplog: pytest.LogCaptureFixture
) -> None:
    provider = _Provider()
    features = _reader(provider, retry_s=2.0)
    before = _errors(kind)
    provider.error = error
    try:
        with caplog.at_level(logging.WARNING, logger="mlsd.serving.online"):
            first = features.read([ROW, ROW], now=NOW)
        reads = len(provider.reads)
        clock.now += 1.999  # still inside retry_s: the store is not asked
        second = features.read([ROW], now=NOW)
        assert len(provider.reads) == reads
        clock.now += 0.001  # retry_s over: asked again (and it answers)
        provider.error = None
        third = features.read([ROW], now=NOW)
    finally:
        features.close()

    assert first.values == {name: [value, value] for name, value in DEFAULTS.items()}
    assert first.missing == [list(DEFAULTS), list(DEFAULTS)]
    assert first.reasons == {(fv.name, "unavailable"): 2 * len(fv.fields) for fv in SPEC.feature_views}
    assert second.reasons == {(fv.name, "unavailable"): len(fv.fields) for fv in SPEC.feature_views}
    assert _errors(kind) - before == 1.0
    assert third.values["age"] == [52]
    (record,) = caplog.records
    verb = {"unavailable": "cannot be reached", "error": "failed a read"}[kind]
    assert record.getMessage() == (
        f"online store sqlite {verb} on a request ({type(error).__name__}: {error}); requests are scored "
        "on the spec defaults (named in missing_features), next try in 2.0 s"
    )


class _Address:
    """A networked store's address (:class:`mlsd.serving.preflight.StoreAddress`): ``down`` is what
    a TCP connection attempt to it says (None: it accepts)."""

    def __init__(self, down: str | None) -> None:
        self.down = down
        self.probes: list[float] = []
        self.answers: Iterator[str | None] | None = None  # one per probe, when given

    def __str__(self) -> str:
        return "redis://store:6379 (from REDIS_URL)"

    def unreachable(self, timeout_s: float) -> str | None:
        self.probes.append(timeout_s)
        return next(self.answers) if self.answers is not None else self.down


@pytest.mark.parametrize(("down", "kind"), [(None, "timeout"), ("connection refused", "unavailable")])
def test_a_read_slower_than_timeout_s_gets_defaults_and_is_told_apart_by_a_probe(
    down: str | None, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A cut-off read is a slow store if its address takes a connection, a down one if not."""
    provider, address = _Provider(), _Address(None)
    features = OnlineFeatures(_store(provider), SPEC, timeout_s=0.05, address=address)
    address.down = down
    before = _errors(kind)
    provider.gate = threading.Event()
    try:
        with caplog.at_level(logging.WARNING, logger="mlsd.serving.online"):
            got = features.read([ROW], now=NOW)
    finally:
        provider.gate.set()
        features.close()
    assert got.reasons == {(fv.name, "unavailable"): len(fv.fields) for fv in SPEC.feature_views}
    assert _errors(kind) - before == 1.0
    assert address.probes == [0.2, 0.05]  # start-up probe, then min(PROBE_S, timeout_s)
    why = "no answer in 50 ms" + (f"; {down}" if down else "")
    verb = {"timeout": "is too slow", "unavailable": "cannot be reached"}[kind]
    assert (
        caplog.records[-1]
        .getMessage()
        .startswith(f"online store redis://store:6379 (from REDIS_URL) {verb} on a request ({why});")
    )


def test_a_store_down_at_start_up_is_counted_and_logged_without_a_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = _Provider()
    before = _errors("unavailable")
    with caplog.at_level(logging.WARNING, logger="mlsd.serving.online"):
        features = OnlineFeatures(_store(provider), SPEC, address=_Address("no route to host"))
    features.close()
    assert provider.reads == []
    assert _errors("unavailable") - before == 1.0
    assert (
        caplog.records[-1]
        .getMessage()
        .startswith(
            "online store redis://store:6379 (from REDIS_URL) cannot be reached at start-up "
            "(no route to host);"
        )
    )


def test_a_store_failing_its_warm_up_read_is_counted_by_kind() -> None:
    provider = _Provider()
    provider.error = RuntimeError("no such table")
    before = _errors("error")
    _reader(provider).close()
    assert _errors("error") - before == 1.0


def test_a_view_missing_from_the_registry_is_named_with_the_fix() -> None:
    with pytest.raises(
        FeatureStoreError, match=r"^feature view 'ad_ctr' is not in the Feast registry of 'units'; run"
    ):
        OnlineFeatures(_store(_Provider(), missing_view="ad_ctr"), SPEC)


def test_unreachable_means_an_os_error_or_a_client_s_connection_error() -> None:
    class ConnectionError(Exception):
        pass

    class RedisConnectionError(ConnectionError):
        pass

    assert online._is_unreachable(TimeoutError()) is True
    assert online._is_unreachable(RedisConnectionError()) is True
    assert online._is_unreachable(ValueError()) is False


def test_reads_go_to_the_store_s_config_on_the_read_thread_with_named_join_keys() -> None:
    provider = _Provider()
    store = _store(provider)
    features = OnlineFeatures(store, SPEC)
    try:
        features.read([ROW], now=NOW)
    finally:
        features.close()
    config, thread, join_keys = provider.seen[-1]
    assert config is store.config
    assert thread.startswith("mlsd-online-read")
    assert join_keys == [["user_id", "category"]]
    assert (features._timeout_s, features._retry_s) == (0.5, 1.0)  # the documented defaults


def test_a_row_without_values_a_missing_field_and_a_null_value_each_get_their_default() -> None:
    provider = _Provider()
    provider.stored["user_profile"][(3,)] = (FRESH, None)  # a timestamp but no values: unknown
    provider.stored["user_profile"][(4,)] = (
        FRESH,
        {"age": Value(null_val=Null.NULL), "country": Value(string_val="GB")},
    )
    features = _reader(provider)
    try:
        got = features.read([{**ROW, "user_id": 3}, {**ROW, "user_id": 4}], now=NOW)
    finally:
        features.close()
    assert got.values["age"] == [35, 35]
    assert got.values["country"] == ["US", "GB"]
    assert got.values["device"] == ["android", "android"]
    assert got.reasons[("user_profile", "unknown")] == 3
    assert got.reasons[("user_profile", "null")] == 2  # age (null_val) and device (absent)


def test_a_read_without_a_time_is_judged_at_the_current_utc_time() -> None:
    features = _reader(_Provider())
    try:
        got = features.read([ROW])
    finally:
        features.close()
    assert got.values["age"] == [52]  # no TTL
    assert got.reasons[("user_ctr", "expired")] == 4  # stored months before today


@pytest.mark.parametrize(("answers", "kind"), [([None, None], "timeout"), ([None, "refused"], "unavailable")])
def test_a_warm_up_read_that_hangs_is_cut_off_and_classified(
    answers: list[str | None], kind: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that takes the connection but never answers the warm-up read is not waited for past
    WARM_UP_S; the probe after it tells a slow store from one that went away."""
    monkeypatch.setattr(online, "WARM_UP_S", 0.6)
    provider, address = _Provider(), _Address(None)
    address.answers = iter(answers)
    provider.gate = threading.Event()
    before = _errors(kind)
    try:
        with caplog.at_level(logging.WARNING, logger="mlsd.serving.online"):
            features = OnlineFeatures(_store(provider), SPEC, address=address)
    finally:
        provider.gate.set()
    features.close()
    assert _errors(kind) - before == 1.0
    why = "no answer in 600 ms" + ("; refused" if kind == "unavailable" else "")
    verb = {"timeout": "is too slow", "unavailable": "cannot be reached"}[kind]
    assert (
        caplog.records[-1]
        .getMessage()
        .startswith(f"online store redis://store:6379 (from REDIS_URL) {verb} at start-up ({why});")
    )


def test_a_slow_file_store_without_an_address_is_a_timeout() -> None:
    provider = _Provider()
    features = _reader(provider, timeout_s=0.05)
    provider.gate = threading.Event()
    before = _errors("timeout")
    try:
        got = features.read([ROW], now=NOW)
    finally:
        provider.gate.set()
        features.close()
    assert _errors("timeout") - before == 1.0
    assert got.values["age"] == [35]


def test_a_read_the_request_gave_up_on_reads_no_further_view() -> None:
    """The first view's read hangs past timeout_s; once it returns, the other views are not asked."""
    provider = _Provider()
    features = _reader(provider, timeout_s=0.05)
    reads = len(provider.reads)
    provider.gate = threading.Event()
    try:
        features.read([ROW], now=NOW)
    finally:
        provider.gate.set()
        features._pool.shutdown(wait=True)  # let the cut-off read finish
    assert [view for view, _, _ in provider.reads[reads:]] == ["user_profile"]


def test_the_store_is_asked_from_the_first_request_whatever_the_clock_reads(clock: _Clock) -> None:
    clock.now = 0.5  # a monotonic clock may start near zero
    provider = _Provider()
    features = _reader(provider)
    reads = len(provider.reads)
    try:
        got = features.read([ROW], now=NOW)
    finally:
        features.close()
    assert len(provider.reads) == reads + len(SPEC.feature_views)
    assert got.values["age"] == [52]


def test_an_offline_view_is_skipped_and_every_online_one_after_it_is_read() -> None:
    import yaml

    from mlsd.spec import spec_from_mapping

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "base" / "problem.yml").read_text())
    raw["problem"]["feature_views"][0]["online"] = False  # user_profile: training only
    spec = spec_from_mapping(raw["problem"])
    provider = _Provider()
    features = OnlineFeatures(_store(provider), spec)
    try:
        got = features.read([ROW], now=NOW)
    finally:
        features.close()
    assert [view for view, _, _ in provider.reads] == ["user_ctr", "ad_ctr", "user_category_ctr"] * 2
    assert "age" not in got.values
