"""Where and when a study's figures were made, for its report: the code each kind of step ran, the dates the
steps finished (their records' `finished_at`) and the calibration figure of each invocation that ran steps."""

from __future__ import annotations

import json
from pathlib import Path

from rimifm.errors import UserError


def read_step_record(path: str | None, what: str) -> dict:
    """A step's record as a dict ({} without a path); an unreadable one is a UserError saying to redo it."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"the {what} record {path} cannot be read ({exc}); run the study again to redo it") from None
    return data if isinstance(data, dict) else {}


def step_records(manifest: dict) -> list[tuple[str, dict]]:
    """(kind, record) of every step record the manifest names that exists here."""
    out = []
    for row in (manifest.get("rows") or {}).values():
        for paths in (row.get("runs") or {}).values():
            for kind, path in paths.items():
                if path and Path(path).is_file():
                    out.append((kind, read_step_record(path, kind)))
    return out


def code_line(manifest: dict, records: list[tuple[str, dict]] | None = None) -> str:
    """The code the report was written with and, where it differs, the code each kind of step ran with (a study
    continued later reuses its finished steps). `records`: step_records(manifest), when read already."""
    report = manifest.get("code_version") or "unknown"
    made: dict[str, set[str]] = {}
    for kind, record in step_records(manifest) if records is None else records:
        if record.get("code_version"):
            made.setdefault(record["code_version"], set()).add(kind)
    if not made or set(made) == {report}:
        return report
    runs = ", ".join(f"{v} ({', '.join(sorted(k))})" for v, k in sorted(made.items()))
    return f"{report} (this report); its steps ran at {runs}"


def dates_line(manifest: dict, records: list[tuple[str, dict]] | None = None) -> str:
    """When the steps ran: the first and last date their records carry, and how many records predate the field."""
    records = step_records(manifest) if records is None else records
    days = sorted(str(r["finished_at"])[:10] for _, r in records if r.get("finished_at"))
    undated = len(records) - len(days)
    if not days:
        return "not recorded (every step record predates `finished_at`)" if records else "no step records here"
    text = days[0] if days[0] == days[-1] else f"{days[0]} to {days[-1]}"
    text = f"the dated steps finished {text} (local dates of their records' `finished_at`)"
    return text + (f"; {undated} of {len(records)} records predate the field" if undated else "")


def calibrations(manifest: dict) -> list[dict]:
    """The calibration figure ({images_per_s, date}) of each invocation that ran steps, oldest first; a manifest
    written before the list holds one figure, undated."""
    if "calibrations" in manifest:
        return list(manifest["calibrations"])
    legacy = manifest.get("calibration_images_per_s")
    return [{"images_per_s": legacy, "date": None}] if legacy else []


def calibration_line(manifest: dict) -> str:
    """The calibration figure of each invocation that ran steps (a study continued later has several)."""
    cals = calibrations(manifest)
    if not cals:
        return "not measured"
    text = ", ".join(f"{c['images_per_s']:g} images/s" + (f" ({c['date']})" if c.get("date") else "")
                     for c in cals)
    return ("calibration figures " + text + ", one for each invocation that ran steps") if len(cals) > 1 \
        else "calibration figure " + text


__all__ = ["calibration_line", "calibrations", "code_line", "dates_line", "read_step_record", "step_records"]
