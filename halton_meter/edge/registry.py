"""The slug -> project path registry (``project-registry.json`` in the home).

Written whenever tiers 1-4a (or a lenient scan) resolve a project, so a later client that
gives fewer clues (an IDE window's first request after a restart) can still be attributed.
Persisted atomically; a corrupt file is reported and rebuilt, never a crash.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from halton_meter.core.fsutil import atomic_write
from halton_meter.core.logging import get_logger

log = get_logger("halton_meter.edge.registry")


class Registry:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._projects: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("edge.registry.corrupt", path=str(self._path), error=str(exc))
            return {}
        projects = data.get("projects") if isinstance(data, dict) else None
        if not isinstance(projects, dict):
            log.warning("edge.registry.corrupt", path=str(self._path), error="no projects map")
            return {}
        return {
            str(slug): entry
            for slug, entry in projects.items()
            if isinstance(entry, dict) and isinstance(entry.get("path"), str)
        }

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return {slug: str(entry["path"]) for slug, entry in self._projects.items()}

    def get(self, slug: str) -> str | None:
        with self._lock:
            entry = self._projects.get(slug)
        return str(entry["path"]) if entry else None

    def lookup_normalized(self, slug: str) -> tuple[str, str] | None:
        """(slug, path) whose slug matches ``slug`` loosely (case, -/_/space/dot)."""
        want = normalize_slug(slug)
        if not want:
            return None
        with self._lock:
            for key, entry in self._projects.items():
                if normalize_slug(key) == want:
                    return key, str(entry["path"])
        return None

    def containing(self, path: str) -> tuple[str, str] | None:
        """The (slug, path) whose registered path is ``path`` or its nearest ancestor."""
        best: tuple[str, str] | None = None
        with self._lock:
            for slug, entry in self._projects.items():
                root = str(entry["path"])
                if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                    if best is None or len(root) > len(best[1]):
                        best = (slug, root)
        return best

    def record(self, slug: str, path: str, tier: str) -> None:
        """Remember slug -> path; writes the file only when something changed."""
        with self._lock:
            entry = self._projects.get(slug)
            if entry is not None and entry.get("path") == path:
                return
            self._projects[slug] = {
                "path": path,
                "tier": tier,
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            payload = json.dumps({"version": 1, "projects": self._projects}, indent=1)
            try:  # under the lock: two writers never rename an older payload over a newer one
                atomic_write(self._path, payload)
            except OSError as exc:
                log.warning("edge.registry.write_failed", path=str(self._path), error=str(exc))


def normalize_slug(slug: str) -> str:
    out = slug.strip().lower()
    for ch in " _.":
        out = out.replace(ch, "-")
    return out.strip("-")
