"""`halton-meter reprice`: rows stored unpriced get a price once the price data knows them."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal
from pathlib import Path

from fixtures_store import BASE_TS, make_row, run_cli, write_rows

from halton_meter import pricing
from halton_meter.cli.reprice import usage_from_record
from halton_meter.core.paths import Home
from halton_meter.store import db, queries
from halton_meter.store.codec import format_total


def _rows(home: Path) -> dict[str, dict]:
    with contextlib.closing(db.connect(Home.resolve(home).db, readonly=True)) as conn:
        return {r["id"]: r for r in queries.query_rows(conn, limit=None)}


def _seed(home: Path) -> None:
    write_rows(
        Home.resolve(home).db,
        [
            # stored unpriced (say, the model was new then); the bundled data knows it now
            make_row(
                id="known",
                model="gpt-4o",
                input_tokens=1000,
                output_tokens=500,
                cost_usd=None,
                price_note="unknown model: gpt-4o",
            ),
            make_row(
                id="sub",
                provider="anthropic",
                api="messages",
                host="api.anthropic.com",
                model="claude-sonnet-4-20250514",
                input_tokens=2000,
                output_tokens=100,
                cost_usd=None,
                api_equivalent=True,
            ),
            make_row(id="unknown", model="no-such-model-xyz", cost_usd=None),
            make_row(
                id="flex",
                model="gpt-5",
                api="responses",
                service_tier="flex",
                input_tokens=1_000_000,
                output_tokens=0,
                cost_usd=None,
            ),
            make_row(id="already", cost_usd=Decimal("0.5")),
        ],
    )


def test_dry_run_then_apply_then_idempotent(hm_home: Path) -> None:
    _seed(hm_home)
    before = _rows(hm_home)
    expected = pricing.price(usage_from_record(before["known"]), BASE_TS)
    assert expected.priced and expected.cost_usd is not None and expected.cost_usd > 0

    dry = run_cli(hm_home, "reprice", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "known" in dry.stdout and "sub" in dry.stdout and "unknown" not in dry.stdout
    assert "Would price 3 of 4 unpriced rows" in dry.stdout
    assert _rows(hm_home) == before  # nothing written

    applied = run_cli(hm_home, "reprice")
    assert applied.returncode == 0, applied.stderr
    assert "Priced 3 of 4 unpriced rows" in applied.stdout
    after = _rows(hm_home)
    assert after["known"]["priced"] is True
    assert Decimal(after["known"]["cost_usd"]) == expected.cost_usd
    assert after["known"]["price_note"] is None
    assert after["sub"]["priced"] is True and after["sub"]["price_note"] == "api-equivalent"
    assert after["unknown"]["priced"] is False and after["unknown"]["cost_usd"] is None
    assert after["already"]["cost_usd"] == "0.5"
    # the stored service tier is a pricing input: flex is half the standard gpt-5 rate
    standard = pricing.price(
        usage_from_record({**before["flex"], "service_tier": None}), BASE_TS
    ).cost_usd
    assert standard is not None
    assert Decimal(after["flex"]["cost_usd"]) * 2 == standard

    again = run_cli(hm_home, "reprice")
    assert again.returncode == 0, again.stderr
    assert "Priced 0 of 1 unpriced rows" in again.stdout
    assert _rows(hm_home) == after

    report = run_cli(hm_home, "report", "--json")
    totals = json.loads(report.stdout)["totals"]
    assert totals["unpriced"] == 1
    # the repriced subscription row is API-equivalent: totalled apart, never spend
    assert Decimal(totals["cost_usd"]) == sum(
        Decimal(after[k]["cost_usd"]) for k in ("already", "known", "flex")
    )
    assert Decimal(totals["api_equivalent_usd"]) == Decimal(after["sub"]["cost_usd"]) > 0


def test_reprice_without_a_store_or_with_a_corrupt_one(hm_home: Path) -> None:
    result = run_cli(hm_home, "reprice")
    assert result.returncode == 0 and "No captures yet" in result.stdout
    assert not Home.resolve(hm_home).db.exists()

    path = Home.resolve(hm_home).db
    path.write_bytes(b"nope" * 1000)
    result = run_cli(hm_home, "reprice")
    assert result.returncode == 3
    assert str(path) in result.stderr and "Traceback" not in result.stderr
    assert path.read_bytes() == b"nope" * 1000


def test_many_changes_are_summarised_per_model(hm_home: Path) -> None:
    write_rows(
        Home.resolve(hm_home).db,
        [make_row(id=f"m{i:03d}", model="gpt-4o", cost_usd=None) for i in range(60)]
        + [make_row(id=f"x{i:03d}", model="no-such-model-xyz", cost_usd=None) for i in range(60)],
    )
    each = pricing.price(usage_from_record(_rows(hm_home)["m000"]), BASE_TS).cost_usd
    assert each is not None
    dry = run_cli(hm_home, "reprice", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"gpt-4o: 60 rows, ${format_total(each * 60)}" in dry.stdout
    assert "m000" not in dry.stdout  # summarised, not 60 row lines
    assert "Would price 60 of 120 unpriced rows" in dry.stdout
    verbose = run_cli(hm_home, "reprice", "--dry-run", "--verbose")
    assert verbose.stdout.count("gpt-4o: unpriced -> $") == 60
