"""The audit's verdicts: per creative, what the platform can get, and what is wrong, for people and scripts.

A file counts for an aspect when a delivery would hand it over as that aspect
with ``worker.check_aspect`` on: the aspect its name spells and its picture
measures, or (a layout without ``{aspect}``) the aspect it measures. The
problems are what would make a delivery refuse a file, or pick one the team
did not mean: a name that disagrees with the picture, a file that cannot be
read as what its extension says, and two files for one aspect and kind (a
delivery takes the first in ``naming``'s order, listed first here).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fulfiller.measure import same_aspect
from fulfiller.media import EXTENSIONS, KINDS, split_extension
from fulfiller.ops.audit_walk import Checked, CreativeKey


@dataclass(frozen=True)
class Problem:
    """``problem`` is ``mislabelled``, ``unreadable`` or ``duplicate``."""

    problem: str
    objects: tuple[str, ...]
    named: str | None = None  # mislabelled
    measured: str | None = None  # mislabelled
    reason: str | None = None  # unreadable
    kind: str | None = None  # duplicate
    aspect: str | None = None  # duplicate

    def text(self) -> str:
        if self.problem == "mislabelled":
            return f"mislabelled: {self.objects[0]} is named {self.named} but measures {self.measured}"
        if self.problem == "unreadable":
            return f"unreadable: {self.objects[0]}: {self.reason}"
        return (f"duplicate: {len(self.objects)} {self.kind}s for {self.aspect} (a delivery takes the first): "
                + ", ".join(self.objects))

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"problem": self.problem}
        if self.problem == "duplicate":
            shown.update(kind=self.kind, aspect=self.aspect, objects=list(self.objects))
        else:
            shown["object"] = self.objects[0]
            if self.problem == "mislabelled":
                shown.update(named=self.named, measured=self.measured)
            else:
                shown["reason"] = self.reason
        return shown


def _rank(checked: Checked) -> tuple[int, str]:
    """A delivery's order among candidates: extension preference, then name."""
    split = split_extension(checked.master.name, checked.kind)
    return (EXTENSIONS[checked.kind].index(split[1]) if split else len(EXTENSIONS[checked.kind]),
            checked.master.name)


@dataclass
class Creative:
    key: CreativeKey
    files: list[Checked]
    aspects: dict[str, list[str]] = field(default_factory=dict)  # kind -> deliverable aspects
    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def judge(cls, key: CreativeKey, files: list[Checked]) -> Creative:
        files = sorted(files, key=lambda c: c.master.object)
        problems: list[Problem] = []
        by_aspect: dict[tuple[str, str], list[Checked]] = defaultdict(list)
        for checked in files:
            obj = checked.master.object
            if checked.error is not None or checked.measured is None:
                problems.append(Problem("unreadable", (obj,), reason=checked.error or "not measured"))
            elif checked.named and not same_aspect(checked.named, checked.measured.aspect):
                problems.append(Problem("mislabelled", (obj,), named=checked.named, measured=checked.measured.aspect))
            else:
                by_aspect[(checked.kind, checked.named or checked.measured.aspect)].append(checked)
        aspects: dict[str, list[str]] = {kind: [] for kind in KINDS}
        for (kind, aspect), candidates in sorted(by_aspect.items()):
            aspects[kind].append(aspect)
            if len(candidates) > 1:
                ranked = tuple(c.master.object for c in sorted(candidates, key=_rank))
                problems.append(Problem("duplicate", ranked, kind=kind, aspect=aspect))
        return cls(key, files, aspects, problems)

    def to_json(self) -> dict[str, Any]:
        variation = self.key.variation
        return {
            **self.key._asdict(),
            "variation": int(variation) if variation and variation.isdigit() else variation,
            "aspects": self.aspects,
            "files": [{
                "object": c.master.object, "kind": c.kind, "bytes": c.master.size, "named": c.named, "type": c.mime,
                "measured": c.measured.to_json() if c.measured else None, "error": c.error,
            } for c in self.files],
            "problems": [p.to_json() for p in self.problems],
        }


def _order(key: CreativeKey) -> tuple[Any, ...]:
    """Creatives by project, code, variation (as a number), locale; a missing value first."""
    variation = key.variation or ""
    return (key.project or "", key.project_id or "", key.code or "",
            (0, int(variation), "") if variation.isdigit() else (1, 0, variation), key.locale or "")


@dataclass
class CatalogReport:
    name: str
    layout: str
    creatives: list[Creative]
    errors: list[tuple[str, str]]  # (folder, why it could not be listed)

    @classmethod
    def build(cls, name: str, layout: str, checked: Iterable[Checked], errors: list[tuple[str, str]]) -> CatalogReport:
        grouped: dict[CreativeKey, list[Checked]] = defaultdict(list)
        for one in checked:
            grouped[one.creative].append(one)
        creatives = [Creative.judge(key, grouped[key]) for key in sorted(grouped, key=_order)]
        return cls(name, layout, creatives, sorted(errors))

    @property
    def problem_count(self) -> int:
        return len(self.errors) + sum(len(c.problems) for c in self.creatives)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "layout": self.layout, "creatives": [c.to_json() for c in self.creatives],
                "errors": [{"folder": folder, "reason": reason} for folder, reason in self.errors],
                "problems": self.problem_count}


def render_json(reports: list[CatalogReport]) -> str:
    return json.dumps({"catalogs": [r.to_json() for r in reports],
                       "problems": sum(r.problem_count for r in reports)}, indent=2)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def render_table(reports: list[CatalogReport]) -> str:
    """Per catalog: one row per creative (the aspects each kind can deliver, the number of problems), its
    problems on the lines under it, then the folders that could not be listed and a count."""
    lines: list[str] = []
    for report in reports:
        lines.append(f"catalog {report.name} (layout {report.layout})")
        with_project = any(c.key.project or c.key.project_id for c in report.creatives)
        head = (["PROJECT"] if with_project else []) + ["CODE", "VARIATION", "LOCALE", "VIDEO", "IMAGE", "PROBLEMS"]
        rows = [head]
        for creative in report.creatives:
            key = creative.key
            project = [key.project or key.project_id or "-"] if with_project else []
            rows.append(project + [key.code or "-", key.variation or "-", key.locale or "-",
                                   " ".join(creative.aspects["video"]) or "-",
                                   " ".join(creative.aspects["image"]) or "-",
                                   str(len(creative.problems)) if creative.problems else "ok"])
        table = _table(rows)
        lines.append(table[0])
        for row, creative in zip(table[1:], report.creatives, strict=True):
            lines.append(row)
            lines.extend(f"    {problem.text()}" for problem in creative.problems)
        lines.extend(f"cannot list {folder}: {reason}" for folder, reason in report.errors)
        files = sum(len(c.files) for c in report.creatives)
        lines.append(f"{len(report.creatives)} creative(s), {files} file(s), {report.problem_count} problem(s)")
        lines.append("")
    return "\n".join(lines).rstrip("\n")
