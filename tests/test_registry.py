"""The model registry on a private BentoML home: immutable versions, the stable pointer, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from mlsd.errors import RegistryError
from mlsd.registry import MODEL_FILE, ModelRegistry

NAME = "ad_click"
# BentoML's pathspec dependency warns about its own deprecated pattern class on every save
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


def tiny_onnx(scale: float = 2.0) -> bytes:
    """A valid one-node ONNX model: y = x * scale."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    k = helper.make_tensor("k", TensorProto.FLOAT, [1], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "tiny", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "bentoml", NAME)


def test_register_returns_a_tag_and_lists_the_version(registry: ModelRegistry) -> None:
    data = tiny_onnx()
    metadata = {"auc": 0.71, "family": "lightgbm", "spec_hash": "abc123"}

    tag = registry.register(data, metadata, {"stage": "test"})

    name, _, version = tag.partition(":")
    assert name == NAME
    assert version
    (listed,) = registry.versions()
    assert listed.tag == tag
    assert listed.metadata == metadata
    assert listed.stable is False
    assert (listed.path / MODEL_FILE).read_bytes() == data
    assert listed.path.is_relative_to(registry.home / "models")
    assert registry.get(tag) == listed
    # another registry object on the same home sees the same store
    assert [v.tag for v in ModelRegistry(registry.home, NAME).versions()] == [tag]


def test_registering_twice_gives_two_versions_and_never_overwrites(registry: ModelRegistry) -> None:
    first_bytes, second_bytes = tiny_onnx(2.0), tiny_onnx(3.0)
    first = registry.register(first_bytes, {"run": 1}, {})
    first_path = registry.get(first).path
    first_files = {p.name: p.read_bytes() for p in first_path.iterdir() if p.is_file()}

    second = registry.register(second_bytes, {"run": 2}, {})

    assert second != first
    versions = registry.versions()
    assert [v.tag for v in versions] == [first, second]  # oldest first
    assert [v.metadata for v in versions] == [{"run": 1}, {"run": 2}]
    assert versions[0].path != versions[1].path
    assert {p.name: p.read_bytes() for p in first_path.iterdir() if p.is_file()} == first_files
    assert (versions[0].path / MODEL_FILE).read_bytes() == first_bytes
    assert (versions[1].path / MODEL_FILE).read_bytes() == second_bytes
    # registering the same bytes again is still a new version
    third = registry.register(first_bytes, {"run": 3}, {})
    assert third not in {first, second}
    assert len(registry.versions()) == 3


def test_stable_is_none_until_promoted_and_promote_writes_history(registry: ModelRegistry) -> None:
    first = registry.register(tiny_onnx(2.0), {}, {})
    second = registry.register(tiny_onnx(3.0), {}, {})
    assert registry.stable() is None
    assert registry.history() == []
    assert not (registry.home / "stable.json").exists()

    registry.promote(first, "first model")

    assert registry.stable() == first
    assert [(v.tag, v.stable) for v in registry.versions()] == [(first, True), (second, False)]

    registry.promote(second, "canary won")

    assert registry.stable() == second
    assert [(v.tag, v.stable) for v in registry.versions()] == [(first, False), (second, True)]
    history = registry.history()
    assert [(h["tag"], h["reason"]) for h in history] == [(first, "first model"), (second, "canary won")]
    assert all(h["at"] for h in history)
    on_disk = json.loads((registry.home / "stable.json").read_text())
    assert on_disk[NAME]["tag"] == second
    assert on_disk[NAME]["history"] == history
    assert not (registry.home / "stable.json.tmp").exists()
    # another model in the same home has its own pointer
    other = ModelRegistry(registry.home, "other_problem")
    assert other.stable() is None
    assert other.versions() == []


def test_promote_unknown_version_lists_the_registered_ones(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match=r"registered versions: none"):
        registry.promote(f"{NAME}:doesnotexist", "why not")

    tags = [registry.register(tiny_onnx(s), {}, {}) for s in (2.0, 3.0)]
    with pytest.raises(RegistryError) as info:
        registry.promote(f"{NAME}:doesnotexist", "why not")
    message = str(info.value)
    assert f"'{NAME}:doesnotexist'" in message
    for tag in tags:
        assert tag in message
    assert registry.stable() is None
    assert registry.history() == []


def test_promote_refuses_a_version_without_its_model_file(registry: ModelRegistry) -> None:
    tag = registry.register(tiny_onnx(), {}, {})
    (registry.get(tag).path / MODEL_FILE).unlink()
    with pytest.raises(RegistryError, match=rf"{MODEL_FILE}"):
        registry.promote(tag, "broken")
    assert registry.stable() is None


@pytest.mark.parametrize("data", [b"", b"definitely not onnx", tiny_onnx()[:-7]])
def test_invalid_onnx_is_refused_and_adds_no_version(registry: ModelRegistry, data: bytes) -> None:
    kept = registry.register(tiny_onnx(), {}, {})
    with pytest.raises(RegistryError, match=r"not a valid ONNX model"):
        registry.register(data, {"bad": True}, {})
    assert [v.tag for v in registry.versions()] == [kept]


def test_onnx_that_fails_the_checker_is_refused(registry: ModelRegistry) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    # "missing" is neither a graph input nor an initializer
    graph = helper.make_graph([helper.make_node("Mul", ["x", "missing"], ["y"])], "bad", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(RegistryError, match=r"not a valid ONNX model"):
        registry.register(model.SerializeToString(), {}, {})
    assert registry.versions() == []


def test_corrupt_stable_json_is_a_registry_error_naming_the_file(registry: ModelRegistry) -> None:
    tag = registry.register(tiny_onnx(), {}, {})
    registry.promote(tag, "first")
    path = registry.home / "stable.json"
    path.write_text('{"ad_click": {"tag": ')

    for call in (registry.stable, registry.history, registry.versions):
        with pytest.raises(RegistryError) as info:
            call()
        assert str(path) in str(info.value)
        assert "not valid JSON" in str(info.value)
    with pytest.raises(RegistryError, match=r"stable\.json"):
        registry.promote(tag, "again")


def test_a_version_whose_model_file_is_short_is_not_listed_and_named_when_asked_for(
    registry: ModelRegistry,
) -> None:
    # What a registration killed while BentoML copied the files into the store leaves behind.
    whole = registry.register(tiny_onnx(), {"note": "kept"}, {})
    short = registry.register(tiny_onnx(3.0), {}, {})
    path = registry.get(short).path / MODEL_FILE
    path.write_bytes(path.read_bytes()[:-5])
    assert [v.tag for v in registry.versions()] == [whole]
    assert registry.get(whole).metadata == {"note": "kept"}  # the recorded size stays internal
    with pytest.raises(RegistryError, match=r"model\.onnx is missing or shorter than registered"):
        registry.get(short)


def test_the_rollout_watcher_leaves_a_file_being_written_for_its_next_poll(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    import os

    from mlsd.serving.rollout import SETTLE_S, RolloutManager
    from mlsd.spec import ModelInput

    stable = registry.register(tiny_onnx(), {}, {})
    registry.promote(stable, "first")
    canary = registry.register(tiny_onnx(3.0), {}, {})
    rollout = tmp_path / "rollout.yaml"
    rollout.write_text("{}\n")
    manager = RolloutManager(rollout, registry, [ModelInput(name="x", dtype="float32")], outputs=("y",))
    rollout.write_text("")  # a writer that truncated the file and has not written it yet
    assert manager.reload() is False  # too fresh to trust: an empty file would read as the defaults
    rollout.write_text(f"canary: {{tag: '{canary}', percent: 50}}\n")
    # The watcher judges the file by its age (mtime), so the test ages the file by SETTLE_S
    # instead of sleeping through the settle window.
    written = rollout.stat().st_mtime
    os.utime(rollout, (written - SETTLE_S, written - SETTLE_S))
    assert manager.reload() is True
    assert manager.active.canary is not None
    assert manager.active.canary.tag == canary


def test_find_identical_matches_the_model_bytes_and_the_given_metadata(registry: ModelRegistry) -> None:
    data = tiny_onnx(2.0)
    first = registry.register(data, {"spec_hash": "s1", "training_data": {"fingerprint": "f1"}}, {})
    same = {"spec_hash": "s1", "training_data.fingerprint": "f1"}

    found = registry.find_identical(data, same)

    assert found is not None
    assert found.tag == first
    assert registry.find_identical(tiny_onnx(3.0), same) is None  # other bytes
    assert registry.find_identical(data, {**same, "spec_hash": "s2"}) is None  # other spec
    assert registry.find_identical(data, {**same, "training_data.fingerprint": "f2"}) is None  # other data
    assert "mlsd_model_sha256" not in found.metadata  # the digest stays internal, like the size


def _register(home: Path, candidate: bytes, fingerprint: str) -> dict:
    """The train pipeline's register node on ``candidate``, with the reports a run would give it."""
    from mlsd.pipelines.registration import register_model
    from mlsd.spec import load_spec

    problem = load_spec(Path(__file__).resolve().parent.parent / "conf" / "base" / "problem.yml")
    return register_model(
        problem.model_dump(mode="json"),
        {"home": str(home), "promote": "first"},
        {"rollout_file": str(home / "rollout.yaml")},
        {"gates": ["auc max_gap_to_oracle"]},
        candidate,
        {"metrics": {"model": {"auc": 0.8}}, "oracle_gap": {"model": {"auc": 0.01}}},
        {"rows": 10, "max_abs_diff": 0.0},
        {"family": "lightgbm", "params": {}, "wall_s": 1.0, "nodes": [1]},
        {"wall_s": 1.0},
        {"fingerprint": fingerprint, "rows": {"train": 1}},
    )


def test_the_register_node_skips_a_model_identical_to_a_registered_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "bentoml"
    first = _register(home, tiny_onnx(2.0), "f1")
    assert first["registered"] is True
    store = ModelRegistry(home, NAME)
    stable_file = (home / "stable.json").read_bytes()

    with caplog.at_level("WARNING", logger="mlsd.pipelines.registration"):
        again = _register(home, tiny_onnx(2.0), "f1")

    assert again == {
        "tag": first["tag"],
        "registered": False,
        "duplicate_of": first["tag"],
        "stable": first["tag"],
        "previous_stable": first["tag"],
        "canary": None,
        "home": str(home.resolve()),
    }
    assert [v.tag for v in store.versions()] == [first["tag"]]
    assert (home / "stable.json").read_bytes() == stable_file  # no promotion was recorded
    assert f"identical to {first['tag']}" in caplog.text
    assert "training.seed" in caplog.text  # says how to get a second version
    # The same bytes trained on other data, or another model, are new versions.
    other_data = _register(home, tiny_onnx(2.0), "f2")
    other_model = _register(home, tiny_onnx(3.0), "f1")
    assert other_data["registered"]
    assert other_model["registered"]
    assert len(store.versions()) == 3
    assert store.stable() == first["tag"]  # registry.promote: first
