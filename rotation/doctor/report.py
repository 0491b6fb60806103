"""The doctor's report: pass, warn or fail per check with a one-line reason, per cluster and in all.

`Finding` is one check's result, `ClusterDiagnosis` every finding for one cluster, `DoctorReport` the
clusters checked; `format_report` renders the CLI table and `log_findings` the warn and fail lines. The
checks that produce findings are `rotation.doctor.checks`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from rotation.doctor.facts import Read

logger = logging.getLogger(__name__)


class Status(StrEnum):
    """The result of one check."""

    PASS = "pass"  # noqa: S105 - a check result, not a password
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    """One check's result and its one-line reason."""

    check: str
    status: Status
    reason: str
    fix: str | None = None  # the command that fixes a warn/fail (rotation.doctor.fixes), when one does

    def to_dict(self) -> dict[str, str]:
        """JSON-ready (``fix`` only when there is one)."""
        out = {"check": self.check, "status": self.status.value, "reason": self.reason}
        if self.fix is not None:
            out["fix"] = self.fix
        return out


@dataclass(frozen=True)
class ClusterDiagnosis:
    """Every finding for one cluster, in the order of `rotation.doctor.checks.CHECKS`."""

    cluster_id: str
    findings: tuple[Finding, ...]

    @property
    def status(self) -> Status:
        """The worst result."""
        statuses = {f.status for f in self.findings}
        return next((s for s in (Status.FAIL, Status.WARN) if s in statuses), Status.PASS)

    def by_check(self) -> dict[str, Finding]:
        """The findings keyed by check name."""
        return {f.check: f for f in self.findings}

    def problems(self) -> list[Finding]:
        """The warn and fail findings."""
        return [f for f in self.findings if f.status is not Status.PASS]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "cluster_id": self.cluster_id,
            "status": self.status.value,
            "checks": [f.to_dict() for f in self.findings],
        }


@dataclass(frozen=True)
class DoctorReport:
    """The reports of every cluster checked."""

    clusters: tuple[ClusterDiagnosis, ...]
    # The mongoClusters api-version and write method a rotation would use (ROTATION_ARM_API_VERSION,
    # ROTATION_WRITE_METHOD): whether encryption is updatable depends on both (docs/deploy.md).
    api_version: str | None = None
    write_method: str | None = None

    @property
    def failed(self) -> bool:
        """Whether any check failed (the CLI exits 1)."""
        return any(c.status is Status.FAIL for c in self.clusters)

    def summary(self) -> dict[str, int]:
        """Counts of clusters and of findings by status."""
        findings = [f for c in self.clusters for f in c.findings]
        counts = {s.value: sum(1 for f in findings if f.status is s) for s in Status}
        return {"clusters": len(self.clusters), "checks": len(findings), **counts}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "status": (Status.FAIL if self.failed else _worst(self.clusters)).value,
            "clusters": [c.to_dict() for c in self.clusters],
            "summary": self.summary(),
            "arm": {"api_version": self.api_version, "write_method": self.write_method},
        }


def _worst(clusters: Iterable[ClusterDiagnosis]) -> Status:
    return Status.WARN if any(c.status is Status.WARN for c in clusters) else Status.PASS


def format_report(report: DoctorReport, *, problems_only: bool = False) -> list[str]:
    """The CLI table: a heading per cluster, then ``PASS/WARN/FAIL  check  reason`` per check.

    Under a warn or fail, ``fix: COMMAND`` when a command fixes it. ``problems_only``: only warn and fail
    lines, and only the clusters that have one (the summary still counts every check).
    """
    lines: list[str] = []
    if report.api_version is not None:
        lines.append(f"ARM api-version {report.api_version}, write method {report.write_method}")
    for cluster in report.clusters:
        findings = cluster.problems() if problems_only else list(cluster.findings)
        if problems_only and not findings:
            continue
        lines.append(f"{cluster.cluster_id}")
        for f in findings:
            lines.append(f"  {f.status.value.upper():<4}  {f.check:<22} {f.reason}")
            if f.fix is not None:
                lines.append(f"        fix: {f.fix}")
    s = report.summary()
    lines.append(
        f"{s['clusters']} cluster(s), {s['checks']} checks: "
        f"{s['pass']} pass, {s['warn']} warn, {s['fail']} fail"
    )
    return lines


def one_line(text: str) -> str:
    """``text`` on one line of at most 200 characters."""
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:197] + "..."  # noqa: PLR2004


def read_error(read: Read[Any]) -> str:
    """The error that stopped ``read``, on one line (``no answer`` when there is none)."""
    error = read.error
    return one_line(str(error)) if error is not None else "no answer"


def could_not(check: str, read: Read[Any], what: str) -> Finding:
    """A ``warn`` of ``check`` whose read failed: "could not check", and why (``what`` may not be read)."""
    if read.denied:
        return Finding(
            check, Status.WARN, f"could not check: the rotator may not read {what} ({read_error(read)})"
        )
    return Finding(check, Status.WARN, f"could not check: {read_error(read)}")


def log_findings(report: ClusterDiagnosis, *, context: str) -> None:
    """Log each warn (WARNING) and fail (ERROR) as ``rotation.doctor_finding``."""
    for finding in report.problems():
        logger.log(
            logging.ERROR if finding.status is Status.FAIL else logging.WARNING,
            "rotation.doctor_finding",
            extra={
                "cluster_id": report.cluster_id,
                "check": finding.check,
                "status": finding.status.value,
                "reason": finding.reason,
                "fix": finding.fix,
                "context": context,
            },
        )
