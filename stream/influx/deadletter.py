"""The dead-letter file: one JSON object per line for each point the database refused (with its
status and reason) or each frame that could not be encoded."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class DeadLetter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, records: list[dict[str, Any]]) -> None:
        """Append records (each gets a ``time`` in UTC) and fsync: the reasons survive a crash."""
        if not records:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        text = "".join(json.dumps({"time": stamp, **r}, ensure_ascii=False) + "\n"
                       for r in records)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            self.count += len(records)

    def lines(self, status: int, reason: str, lines: list[bytes]) -> None:
        self.add([{"status": status, "reason": reason,
                   "line": line.decode("utf-8", "replace")} for line in lines])

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
