"""Feast definitions for `feast apply` run by hand in this folder.

They are built from the problem spec (conf/base/problem.yml) by the same function the Kedro
pipeline uses, so both register identical objects. Run the pipeline first so the feature tables
exist: `kedro run`, then `cd feature_repo && feast apply && feast materialize-incremental $(date -u +%FT%T)`.
"""

from pathlib import Path

from mlsd.features import feast_objects
from mlsd.spec import load_spec

_ROOT = Path(__file__).resolve().parent.parent

globals().update(feast_objects(load_spec(_ROOT / "conf" / "base" / "problem.yml"), "../data/04_feature"))
