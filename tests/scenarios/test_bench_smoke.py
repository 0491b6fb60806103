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


@pytest.fixture(scope="module")
def bench_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """One tiny `make bench` run: its process, JSON and report."""
    tmp_path = tmp_path_factory.mktemp("bench")
    out_json = tmp_path / "bench.json"
    out_md = tmp_path / "benchmarks.md"
    argv = [
        "--sizes", "10", "--subscriptions", "2", "--event-sizes", "10", "--event-repeats", "2",
        "--naive-size", "2", "--import-runs", "1", "--concurrency", "16",
        "--operation", "1", "--poll-interval", "0.5", "--stress-sizes", "4", "--stress-operation", "0.5",
        "--stress-poll-interval", "0.25",
        "--scale-workers", "1,2", "--scale-size", "12", "--scale-subscriptions", "3",
        "--reconcile-size", "30", "--reconcile-keys", "3", "--reconcile-subscriptions", "3",
        "--serve-runs", "1", "--cost-requests", "40",
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
    return proc, out_json, out_md


@pytest.mark.slow
def test_bench_runs_at_a_tiny_size(bench_run: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    """Every scenario completes, every cluster is verified, the figures are consistent with each other."""
    proc, out_json, out_md = bench_run
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
        "scale_out",
        "reconcile",
        "serve_cold_start",
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


@pytest.mark.slow
def test_bench_measures_scale_out_reconcile_and_per_job_cost(
    bench_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    """The scale-out runs (one per worker count), the reconcile pass, serve's cold start, each job's cost."""
    proc, out_json, _ = bench_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out_json.read_text())
    fan = result["fanout"][0]
    cost = fan["worker_cost"]
    assert cost["jobs"] == 10
    assert cost["cpu_ms_per_job"] > 0
    assert cost["storage_per_job_by_kind"]["table GET"] >= 1  # each job reads its registry rows
    assert fan["cpu_budget"]["total_s"] > 0
    one, two = result["scale_out"]
    assert (one["workers"], two["workers"]) == (1, 2)
    assert (one["verified"], two["verified"]) == (12, 12)
    assert two["subscriptions"] == 3
    assert two["worker_results"]["processes"] == 2
    rec = result["reconcile"]
    assert (rec["clusters"], rec["keys"], rec["arm_reads"]) == (30, 3, 30)
    assert rec["keyvault_reads_per_key"] <= 2
    [serve] = result["serve_cold_start"]
    assert 0 < serve["listening_s"] <= serve["healthy_s"] < 30
    unit = result["request_cost"]
    assert set(unit) == {
        "table_sdk_ms",
        "table_write_sdk_ms",
        "table_aiohttp_ms",
        "arm_sdk_ms",
        "arm_aiohttp_ms",
    }
    assert all(v > 0 for v in unit.values())
    assert "CPU of the job's requests alone" in proc.stdout  # the stress row prices its requests
