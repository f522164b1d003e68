"""The system at a glance: a small Mermaid flowchart named with the spec's tables and models."""

from __future__ import annotations

from mlsd.spec import ProblemSpec


def _label(text: str) -> str:
    """A Mermaid node label; double quotes would end it."""
    return '"' + text.replace('"', "'") + '"'


def diagram(spec: ProblemSpec) -> list[str]:
    """The flowchart from raw data to monitoring, as Markdown lines."""
    raw = ", ".join(name for name, t in spec.tables.items() if t.layer == "raw")
    views = ", ".join(fv.name for fv in spec.feature_views)
    nodes = {
        "raw": f"raw tables: {raw}",
        "gx": "Great Expectations checks",
        "events": f"{spec.events_table} (labelled)",
        "feast": f"Feast feature views: {views}",
        "train": "point-in-time training set",
        "ray": f"Ray Tune + Train: {spec.baseline.family} -> {spec.model.family}",
        "gates": "gates vs baseline and oracle, ONNX parity",
        "registry": "model registry (ONNX)",
        "online": "online store",
        "serve": f"BentoML service: stable / canary / shadow, {spec.serving.latency_budget_ms:g} ms",
        "log": "prediction log",
        "monitor": "Evidently drift + canary analysis",
    }
    edges = [
        ("raw", "gx"),
        ("gx", "events"),
        ("events", "feast"),
        ("feast", "train"),
        ("train", "ray"),
        ("ray", "gates"),
        ("gates", "registry"),
        ("feast", "online"),
        ("registry", "serve"),
        ("online", "serve"),
        ("serve", "log"),
        ("log", "monitor"),
    ]
    lines = ["```mermaid", "flowchart LR"]
    lines += [f"  {key}[{_label(text)}]" for key, text in nodes.items()]
    lines += [f"  {a} --> {b}" for a, b in edges]
    lines.append("  monitor -.->|retrain, promote, roll back| ray")
    return [*lines, "```"]
