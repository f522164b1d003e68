"""Kedro datasets mlsd needs that kedro-datasets lacks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class BytesDataset(AbstractDataset[bytes, bytes]):
    """Raw bytes in one file (an ONNX graph, a PNG), replaced atomically so a crash never leaves half."""

    def __init__(self, filepath: str) -> None:
        self._path = Path(filepath)

    def _load(self) -> bytes:
        return self._path.read_bytes()

    def _save(self, data: bytes) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self._path)

    def _exists(self) -> bool:
        return self._path.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path)}


class OptionalJSONDataset(AbstractDataset[None, dict[str, Any] | None]):
    """A JSON file another command writes (a benchmark result); loads as None while it is absent."""

    def __init__(self, filepath: str) -> None:
        self._path = Path(filepath)

    def _load(self) -> dict[str, Any] | None:
        if not self._path.is_file():
            return None
        data = json.loads(self._path.read_text())
        if not isinstance(data, dict):
            raise DatasetError(f"{self._path} holds a {type(data).__name__}, not a JSON object")
        return data

    def _save(self, data: None) -> None:
        raise DatasetError(f"{self._path} is read-only here; the command that measures it writes it")

    def _exists(self) -> bool:
        return self._path.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path)}
