"""The segment stage's summary.json: everything kept and everything left out, by reason, and
the max_skip_fraction check that fails the stage."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.beats import rhythm
from data_prep.beats.candidates import Segments
from data_prep.beats.windows import SegmentParams
from data_prep.records.configs import LabelMap


def summarise(results: list[Any], excluded: dict[str, str], labels: LabelMap,
              params: SegmentParams, database: str) -> dict:
    """Counts of everything kept and left out, as written to summary.json."""
    kept: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    non_beat: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    rr_status: Counter[str] = Counter()
    per_record = {}
    for res in results:
        seg = res.segments or Segments(*(np.empty(0),) * 3)
        lost = Counter(seg.skipped) + (Counter({res.skip.reason: res.skip.lost}) if res.skip
                                       else Counter())
        kept.update(seg.label.tolist() if res.skip is None else [])
        skipped.update(lost)
        non_beat.update(seg.non_beat)
        unknown.update(seg.unknown)
        if res.index is not None:
            rr_status.update(s for s in res.index[rhythm.STATUS] if s)
        per_record[res.record] = {"kept": 0 if res.index is None else len(res.index),
                                  "skipped": dict(lost)}
    n_kept, n_skipped = sum(kept.values()), sum(skipped.values())
    return {
        "database": database, "label_mode": params.label_mode,
        "records": {"processed": sum(r.skip is None for r in results),
                    "skipped": {r.record: {"reason": r.skip.reason, "detail": r.skip.detail}
                                for r in results if r.skip},
                    "excluded": excluded},
        "segments_kept": {c: kept.get(c, 0) for c in labels.classes}, "kept_total": n_kept,
        "segments_skipped": dict(skipped.most_common()), "skipped_total": n_skipped,
        "skip_fraction": n_skipped / max(n_kept + n_skipped, 1),
        "max_skip_fraction": params.max_skip_fraction,
        "non_beat_annotations": dict(non_beat.most_common()),
        "unknown_labels": dict(unknown.most_common()),
        # kept, with a defined stand-in value for an interval that could not be measured
        "rhythm_fallbacks": dict(rr_status.most_common()),
        "lead_fallbacks": {r.record: r.lead for r in results if r.fell_back and r.lead},
        **({"second_lead": _second_lead(results)} if params.second_leads else {}),
        "tolerated_headers": {r.record: list(r.header_dropped) for r in results
                              if r.header_dropped},
        "per_record": per_record,
    }


def _second_lead(results: list[Any]) -> dict:
    """Two-lead segments: records whose first lead stood in for a missing second lead, and
    the second lead each record used (`data_prep.beats.second_lead`)."""
    used = [r for r in results if r.index is not None]
    duplicated = sorted(r.record for r in used if r.duplicated)
    return {"duplicated": duplicated, "n_duplicated": len(duplicated),
            "leads": dict(Counter(r.second for r in used if not r.duplicated).most_common())}


def check_skips(summary: dict, path: Path) -> None:
    """Fails the stage when too much was skipped, naming the worst records and reasons."""
    worst = sorted(summary["per_record"].items(), key=lambda kv: -sum(kv[1]["skipped"].values()))
    cause = _worst_cause(summary, worst)
    if summary["kept_total"] == 0:
        raise ValueError(f"no segment kept.{cause} See {path} for why each record was skipped")
    if summary["skip_fraction"] <= summary["max_skip_fraction"]:
        return
    names = "; ".join(f"{rec}: {counts['skipped']}" for rec, counts in worst[:5])
    raise ValueError(
        f"{summary['skipped_total']} of {summary['skipped_total'] + summary['kept_total']} "
        f"labelled segments skipped ({summary['skip_fraction']:.2%} > segment.max_skip_fraction "
        f"{summary['max_skip_fraction']:.2%}); worst records: {names}.{cause}"
        f" Fix the records or the label map, exclude them in configs/databases, or raise "
        f"max_skip_fraction; see {path}"
    )


def _worst_cause(summary: dict, worst: list[tuple[str, dict]]) -> str:
    """The detail of the worst record skipped whole (its file, field and fix), or ""."""
    whole = summary["records"]["skipped"]
    record = next((rec for rec, _ in worst if rec in whole), None)
    if record is None:
        return ""
    return " " + " ".join(f"{record} skipped whole: {whole[record]['detail']}".split()) + "."
