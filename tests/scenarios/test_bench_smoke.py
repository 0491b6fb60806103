"""`make bench` at a tiny size: it completes, writes its JSON and report, and its figures are sane.

Not the performance targets (a loaded CI machine says little about them): that every cluster was rotated and
verified, the bound and ratio are consistent, no request went out inside a Retry-After window, and the
request counts are those of one rotation per cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT


@pytest.mark.slow
def test_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """scripts/bench.py runs at a tiny size, exits 0 and writes its JSON and Markdown with every section."""
    out_json = tmp_path / "bench.json"
    out_md = tmp_path / "benchmarks.md"
    argv = [
        "--sizes", "10", "--subscriptions", "2", "--event-sizes", "10", "--event-repeats", "2",
        "--naive-size", "2", "--import-runs", "1", "--concurrency", "16",
        "--operation", "1", "--poll-interval", "0.5", "--stress-sizes", "4", "--stress-operation", "0.5",
        "--stress-poll-interval", "0.25",
        "--json", str(out_json), "--markdown", str(out_md),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}}
    proc = subprocess.run(  # noqa: S603 - this repository's script
        [sys.executable, str(ROOT / "scripts" / "bench.py"), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| figure" in proc.stdout

    result = json.loads(out_json.read_text())
    assert {
        "fanout",
        "warmup",
        "naive",
        "events",
        "footprint",
        "worker",
        "environment",
        "scale",
        "command",
    } <= set(result)
    [fan, stress] = result["fanout"]
    assert (stress["clusters"], stress["verified"], stress["stress"]) == (4, 4, True)
    assert (stress["operation_s"], stress["poll_interval_s"]) == (0.5, 0.25)
    assert stress["lower_bound_s"] >= 0.5
    assert "stress fan-out N=4, operation 0.5 s" in proc.stdout
    assert fan["clusters"] == 10
    assert fan["verified"] == 10
    assert fan["makespan_s"] > 0
    assert fan["lower_bound_s"] >= 1.0  # at least the 1 s operation
    assert fan["ratio"] == pytest.approx(fan["makespan_s"] / fan["lower_bound_s"], rel=0.01)
    assert fan["sent_inside_retry_after"] == 0
    assert fan["writes"] >= 10
    assert 0.0 <= fan["write_429_share"] <= 1.0
    per = fan["per_cluster"]
    assert per["puts"] >= 1.0
    assert per["gets"] >= 2.0
    assert fan["keyvault_reads_per_key"] >= 1
    assert result["worker"]["succeeded"] >= 10
    assert result["worker"]["failed"] == 0
    assert 10 < result["worker"]["peak_rss_mb"] < 2000
    assert result["naive"]["clusters"] == 2
    assert result["naive"]["seconds"] >= 2.0  # two operations of 1 s, one after the other
    [events] = result["events"]
    assert events["calls"] == 2
    assert 0 < events["p50_s"] <= events["max_s"]
    assert all(0 < t < 30 for t in result["footprint"]["import_s"])

    report = out_md.read_text()
    assert "python scripts/bench.py" in report
    assert "| figure" in report
    assert f"{result['environment']['cpus']} CPUs" in report
