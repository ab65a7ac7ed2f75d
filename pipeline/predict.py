"""Classify ECG records with an exported bundle, from the shell (installed as `ecg-predict`).

Run: ecg-predict --bundle models/export/<db>/<run> RECORD_OR_FOLDER... --out p.csv
     (or python -m pipeline.predict ...)
Writes the CSV (and, for record and rhythm bundles, `<out>.records.csv`: one row per record,
`Bundle.per_record`). A bad record is a record_error row, never the end of the run; the CSV is
always written and the exit status is 1 when nothing was classified. Errors are one line;
--debug shows tracebacks. The library behind it, for scripts, is `pipeline.runtime`
(`load_bundle`); `from pipeline.predict import load_bundle` keeps working.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from data_prep.cli import DEBUG_FLAG, run_main
from pipeline.evaluation import record_level
from pipeline.runtime.predict import BUNDLE_ANNOTATOR, Bundle, load_bundle

__all__ = ["BUNDLE_ANNOTATOR", "Bundle", "load_bundle", "main"]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="models/export/<db>/<run>")
    parser.add_argument("inputs", nargs="+", type=Path, help="records (dir/name) or folders")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--annotator", default=BUNDLE_ANNOTATOR,
                        help="beat annotation extension (default: the bundle's); 'none' detects")
    parser.add_argument("--lead", help="use this lead instead of the bundle's preference list")
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    annotator = None if args.annotator.lower() == "none" else args.annotator
    bundle = load_bundle(args.bundle)
    tables = [bundle.predict_folder(p, annotator, args.lead) if p.is_dir()
              else bundle.predict_record_or_error(p, annotator, args.lead) for p in args.inputs]
    table = pd.concat(tables, ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.6g")
    if bundle.segment.label_mode in record_level.RECORD_LABEL_MODES:  # + <out>.records.csv
        records = args.out.with_suffix(".records.csv")
        bundle.per_record(table).to_csv(records, index=False, float_format="%.6g")
        log.info("wrote %s: one row per record (mean of its windows' probabilities)", records)
    n_ok = int((table["status"] == "ok").sum())
    log.info("wrote %s: %d rows, %d classified", args.out, len(table), n_ok)
    if not n_ok:
        raise ValueError(f"nothing classified in {table['record'].nunique()} record(s); the "
                         f"status and note columns of {args.out} say why for each")


def cli() -> None:
    """The installed command: errors as one line (`data_prep.cli.run_main`)."""
    run_main(main)


if __name__ == "__main__":
    cli()
