"""`bench/run.py --quick` end to end, so the benchmark harness cannot rot.

Runs the real thing at a small size (Postfix, smtp-source, smtp-sink, relayguard,
the scale figures) and checks the JSON it writes. Skipped, with the harness's
own reason, where Postfix's tools are missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "bench" / "run.py"
SKIP_EXIT = 77


@pytest.mark.postfix
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_quick(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
        check=False,
    )
    if res.returncode == SKIP_EXIT:
        reason = next((ln for ln in res.stdout.splitlines() if "skipped" in ln), res.stdout)
        pytest.skip(reason.strip())
    assert res.returncode == 0, (
        f"bench/run.py --quick failed:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}"
    )

    files = list(tmp_path.glob("bench-*.json"))
    assert len(files) == 1, files
    data = json.loads(files[0].read_text())

    for key in ("ingest_ratio", "end_to_end_ratio"):
        assert isinstance(data[key], float), (key, data[key])
        assert data[key] > 0, (key, data[key])
    for key in ("summary", "ratios", "sink_limit", "relay", "scale", "goals", "workload"):
        assert key in data, key

    # The PostgreSQL spool beside SQLite, or the reason it could not run here.
    assert "postgres_summary" in data or data["postgres"]["skipped"], data.get("postgres")
    for variant, systems in data["relay"].items():
        for system in ("postfix", "relayguard"):
            runs = systems[system]
            assert runs, (variant, system)
            for run in runs:
                assert run["ingest_rate"] > 0, (variant, system, run)
                assert run["end_to_end_rate"] > 0, (variant, system, run)
                assert run["end_to_end_rate"] <= run["ingest_rate"] * 1.05, run
                assert run["peak_rss_kb"] > 0, (variant, system, run)
                assert run["latency_samples"] > 0, (variant, system, run)
                assert run["latency_p50_ms"] > 0
        for run in data["sink_limit"][variant]:
            assert run["rate"] > 0

    rg = data["relay"]["per_connection"]["relayguard"][0]
    # every message sent (smtp-source's and the sampler's) was accepted and delivered once
    assert rg["log_events"]["accepted"] == rg["log_events"]["delivered"], rg["log_events"]

    scale = data["scale"]
    assert scale["scheduler"]["enqueue_per_s"] > 0
    assert scale["scheduler"]["dequeue_drain_per_s"] > 0
    assert scale["restart"]["messages"] == data["scale"]["scheduler"]["n"]
    assert scale["restart"]["total_seconds"] > 0
    assert scale["restart"]["traced_bytes_per_message"] > 0
    assert {g["goal"] for g in data["goals"]} >= {
        "durable ingest ≥ 1.0x Postfix",
        "end-to-end ≥ 1.0x Postfix",
        "restart with 1M queued ≤ 30 s",
        "≤ 1 KB of memory per queued message",
    }
    assert "relayguard vs Postfix" in res.stdout  # the table was printed
