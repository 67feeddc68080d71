"""The daemon's logger: structlog through core.logging (stdout for info, stderr for warnings)."""

from __future__ import annotations

from typing import Any

from halton_meter.core.logging import get_logger

log: Any = get_logger("halton_meter.daemon")
