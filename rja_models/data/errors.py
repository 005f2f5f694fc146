"""The one exception type of the data package."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data (video, annotation, crops, features); the message names the offending file."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")
