"""Store benchmark: ingest rate through the RowWriter, and `report` time over a million rows.

Baselines in the same run: one `executemany` transaction into the same schema (ingest), and
`halton-meter --version` (the CLI start-up floor under `report`). Writes scripts/bench/out/store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from halton_meter.store import db
from halton_meter.store.model import Row
from halton_meter.store.writer import UPSERT_SQL, RowWriter, row_params

OUT = Path(__file__).parent / "out"


def _rows(n: int) -> list[Row]:
    t0 = datetime.now(UTC) - timedelta(days=30)
    models = ("claude-sonnet-4-5", "gpt-4o-mini", "gemini-2.5-flash")
    return [
        Row(
            ts=t0 + timedelta(seconds=i * 2.5),
            tool=("claude-code", "python", "curl")[i % 3],
            project=f"proj-{i % 17}",
            provider=("anthropic", "openai", "gemini")[i % 3],
            api="messages",
            model=models[i % 3],
            status=200,
            input_tokens=100 + i % 50,
            output_tokens=20 + i % 7,
            cost_usd=Decimal("0.000123"),
            priced=True,
            latency_ms=12.5,
        )
        for i in range(n)
    ]


def bench_ingest(directory: Path, n: int) -> dict[str, float]:
    rows = _rows(n)
    params = [row_params(r) for r in rows]
    base_path = directory / "baseline.sqlite"
    conn = db.connect(base_path)
    t = time.perf_counter()
    conn.execute("BEGIN")  # one transaction: the fastest this schema can ingest
    conn.executemany(UPSERT_SQL, params)
    conn.execute("COMMIT")
    baseline = n / (time.perf_counter() - t)
    conn.close()

    writer = RowWriter(directory / "writer.sqlite")
    t = time.perf_counter()
    for row in rows:
        writer.submit(row)
    writer.flush(timeout=600)
    rate = n / (time.perf_counter() - t)
    writer.close()
    return {"writer_rows_per_s": rate, "executemany_rows_per_s": baseline, "ratio": rate / baseline}


def bench_report(home: Path, n: int) -> dict[str, float]:
    writer = RowWriter(home / "db.sqlite")
    batch = 50_000
    for start in range(0, n, batch):
        for row in _rows(min(batch, n - start)):
            writer.submit(row)
        writer.flush(timeout=600)
    writer.close()
    env = {**os.environ, "HALTON_METER_HOME": str(home)}

    def timed(args: list[str]) -> float:
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "halton_meter", *args], env=env, check=True, capture_output=True
        )
        return time.perf_counter() - t

    version = timed(["--version"])  # interpreter + CLI import: the floor for any command
    report = min(timed(["report", "--json"]) for _ in range(3))
    by_model = min(timed(["report", "--by", "model", "--json"]) for _ in range(3))
    return {
        "rows": n,
        "cli_floor_s": version,
        "report_s": report,
        "report_by_model_s": by_model,
        "report_over_floor_s": report - version,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ingest-rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "ingest": bench_ingest(Path(tmp), args.ingest_rows),
            "report": bench_report(Path(tmp), args.rows),
        }
    OUT.mkdir(exist_ok=True)
    (OUT / "store.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
