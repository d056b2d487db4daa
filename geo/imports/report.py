"""What an import did, feature by feature: the report document (API.md).

``{imported, updated, unchanged, rejected, skipped, errors: [{index, source_id,
reason}], warnings: [...]}``; a dry run adds the mapping it would use and the
counts per target value.  ``errors`` and ``warnings`` keep the first
:data:`MAX_LISTED` entries; the counts are always complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from geo.core.errors import InvalidInput

__all__ = ["MAX_LISTED", "ImportRefused", "Report"]

#: How many errors and warnings a report lists (the counts cover all of them).
MAX_LISTED = 1_000


@dataclass
class Report:
    """The outcome of one import (or of a dry run)."""

    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    skipped: int = 0
    features: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[Any] = field(default_factory=list)
    dry_run: bool = False
    mapping: dict[str, Any] | None = None
    counts: dict[str, dict[str, int]] | None = None
    layers: list[str] = field(default_factory=list)
    households: Report | None = None

    @property
    def refused(self) -> bool:
        """Whether any feature (or household) was rejected."""
        return bool(self.rejected or (self.households and self.households.rejected))

    def as_dict(self) -> dict[str, Any]:
        """The JSON document."""
        body: dict[str, Any] = {
            "imported": self.imported,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "features": self.features,
            "errors": self.errors[:MAX_LISTED],
            "warnings": self.warnings[:MAX_LISTED],
            "layers": self.layers,
        }
        if self.households is not None:
            part = self.households
            body["households"] = {
                "imported": part.imported,
                "updated": part.updated,
                "unchanged": part.unchanged,
                "rejected": part.rejected,
                "errors": part.errors[:MAX_LISTED],
            }
        if self.dry_run:
            body["dry_run"] = True
            body["mapping"] = self.mapping
            body["counts"] = self.counts
        return body

    def summary(self) -> str:
        """One line for a terminal."""
        verb = "would import" if self.dry_run else "imported"
        return (
            f"{verb} {self.imported}, updated {self.updated}, unchanged {self.unchanged}, "
            f"rejected {self.rejected}, skipped {self.skipped} of {self.features} feature(s)"
        )


class ImportRefused(InvalidInput):
    """A file with bad features imported all-or-nothing: a 422 carrying the report."""

    slug = "import-refused"

    def __init__(self, report: Report) -> None:
        first = report.errors[0] if report.errors else {}
        where = f" (first: feature {first.get('index')}: {first.get('reason')})" if first else ""
        what = f"{report.rejected} of {report.features} feature(s) cannot be imported{where}"
        part = report.households
        if part is not None and part.rejected:
            first = part.errors[0] if part.errors else {}
            households = (
                f"{part.rejected} of {part.features} household(s) cannot be imported "
                f"(first: row {first.get('index')}: {first.get('reason')})"
            )
            what = f"{what}; {households}" if report.rejected else households
        super().__init__(
            f"{what}; nothing was written (send partial=true to import the valid ones)",
            **report.as_dict(),
        )
        self.report = report
