"""Evaluate an exported bundle on another database: train on one database, test on another.

Runs the bundle on the records of a database in a local mirror (`<mirror>/<db>/`, read in place)
through `pipeline.runtime` (its lead choice, resampling, band-pass, rhythm features and windows),
labels every row from that database's annotations or reference CSV through the bundle's label map
(`pipeline.evaluation.cross_reference`) and scores the labelled rows with the evaluate stage's own
code (`pipeline.evaluation.report_writer`): per-class Se/+P/F1, the N/S/V/F macro-F1, bootstrap
intervals over subjects (records, or the config's `subjects:`), confusion matrix, caveats for tiny
classes and, for record and rhythm bundles, record-level scores.

Writes `<out>` (default `reports/cross/<train_db>-on-<eval_db>/<run>/`, apart from the training
database's reports and models): metrics.json, headline.json, details/ (as evaluate writes them),
predictions.csv (the scored rows, with subject and lead), rows.csv (every row predict returned,
with `reason`, empty for a scored row) and cross.json (bundle, databases, split, records,
excluded records, lead per record, rows by reason, MLflow run). With tracking on, one MLflow run
in the project's experiment, tagged cross.train_database / cross.eval_database /
cross.bundle_run / cross.split, holds the same metrics (eval_<split>_...) and the folder.

Run: `python -m pipeline.cross_evaluate --bundle models/export/mitdb/<run> --database svdb
[--mirror DIR] [--split all|test] [--records R ...] [--out DIR] [--no-mlflow]`
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd

from data_prep.cli import DEBUG_FLAG, run_main
from data_prep.layout import atomic_path, write_json
from data_prep.params import DEFAULT_PARAMS, read_yaml
from data_prep.records.configs import DATABASES_DIR, DatabaseConfig, load_database
from pipeline.evaluation import cross_reference, record_level
from pipeline.evaluation.headline import macro_f1_text
from pipeline.evaluation.report_folder import (
    CONFUSION,
    DETAILS,
    FLOAT_FORMAT,
    HEADLINE,
    METRICS,
    NOTES,
    PREDICTIONS,
)
from pipeline.evaluation.report_writer import evaluate_predictions, write_reports
from pipeline.runtime import predict_table
from pipeline.runtime.predict import BASE, Bundle, load_bundle

log = logging.getLogger(__name__)

CROSS_ROOT = Path("reports/cross")
ROWS, SUMMARY = "rows.csv", "cross.json"
DEFAULTS = {"n_boot": 1000, "seed": 42}  # used when params.yaml has no evaluate: section


def default_out(train_db: str, eval_db: str, run: str, root: Path = CROSS_ROOT) -> Path:
    """`reports/cross/<train_db>-on-<eval_db>/<run>/`: never a folder of the training run."""
    return root / f"{train_db}-on-{eval_db}" / run


def predict_rows(bundle: Bundle, folder: Path, records: list[str], config: DatabaseConfig,
                 annotator: str | None, reference: dict[str, str] | None) -> pd.DataFrame:
    """Every predict row of the records, labelled, with subject, lead and reason."""
    tables = []
    for record in records:
        lead = cross_reference.choose_lead(bundle, folder, record, config)
        if lead is None:  # predict_record would name only the bundle's leads
            table = predict_table.problem(record, "missing_lead", (
                f"record {record}: none of the bundle's leads {bundle.segment.leads} nor the "
                f"database config's {config.leads}; add its lead name to "
                f"configs/databases/{folder.name}.yaml leads:"), bundle.classes)
        else:  # predict logs the lead it reads
            table = bundle.predict_record_or_error(folder / record, annotator, lead)
        table = cross_reference.label_rows(bundle, folder, record, table, annotator, reference)
        tables.append(table.assign(subject=config.subjects.get(record, record), lead=lead or ""))
    return pd.concat(tables, ignore_index=True)


def scored_predictions(rows: pd.DataFrame, split: str, classes: list[str]) -> pd.DataFrame:
    """The rows with a reference label, in evaluate's predictions.csv layout (+ subject, lead)."""
    scored = rows[rows["reason"] == ""].reset_index(drop=True)
    columns = ["record", "subject", "lead", "sample", "label", "pred",
               *(f"prob_{c}" for c in classes)]
    table = scored[columns].astype({f"prob_{c}": "float32" for c in classes})
    table.insert(0, "split", split)
    return table


def run(bundle_path: Path, database: str, *, mirror: Path | None = None, split: str = "all",
        records: list[str] | None = None, out: Path | None = None, n_boot: int = 1000,
        seed: int = 42, tracking_params: Any = None, databases_dir: Path = DATABASES_DIR,
        annotator: str | None = None, reference: Path | None = None,
        definition: str | None = None) -> dict:
    """Evaluates the bundle on `database`'s records and writes `out` (module doc).

    Args:
        tracking_params: `pipeline.tracking.run_tracking.TrackingParams`; None evaluates
            without MLflow.

    Returns:
        The summary written to cross.json, with the metrics.

    Raises:
        ValueError: no row could be scored (rows.csv and cross.json say why), or a bad input.
    """
    bundle = load_bundle(bundle_path)
    run_name = Path(bundle_path).resolve().name
    train_db = str((bundle.meta.get("data") or {}).get("database") or "unknown")
    config = load_database(database, databases_dir)
    config.check_label_mode(bundle.segment.label_mode, database)
    folder = cross_reference.database_folder(mirror, database)
    selection = cross_reference.select_records(folder, config, split, records, definition)
    out = Path(out) if out is not None else default_out(train_db, database, run_name)
    _check_out(out, bundle)
    ann = cross_reference.annotator_for(bundle, config, annotator)
    ref = cross_reference.load_reference(bundle, folder, reference)
    summary: dict[str, Any] = {
        "bundle": str(bundle_path), "bundle_run": run_name, "train_database": train_db,
        "eval_database": database, "database_config": config.configured, "folder": str(folder),
        "split": selection.split, "split_definition": selection.definition,
        "records": selection.records, "excluded": selection.excluded, "annotator": ann,
        "label_mode": bundle.segment.label_mode, "n_boot": n_boot, "seed": seed}
    with _tracking(tracking_params, summary) as run_id:
        rows = predict_rows(bundle, folder, selection.records, config, ann, ref)
        summary |= _counts(rows) | {"mlflow_run_id": run_id}
        _write_rows(out, rows, summary)
        predictions = scored_predictions(rows, selection.split, bundle.classes)
        if predictions.empty:
            raise ValueError(f"no row of {len(selection.records)} records of {database} has "
                             f"a reference label: {summary['unscored']} ({out / ROWS} says "
                             "why for each row)")
        with atomic_path(out / PREDICTIONS) as tmp:
            predictions.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
        results = evaluate_predictions(predictions, bundle.classes, n_boot, seed, unit="subject")
        by_record = bundle.segment.label_mode in record_level.RECORD_LABEL_MODES
        metrics = write_reports(results, predictions, out, {selection.split: len(predictions)},
                                by_record=by_record)
        _write_notes(out / DETAILS / NOTES, summary, results[selection.split].notes)
        if run_id:
            _log(run_id, out, metrics)
    log.info("wrote %s: %s %s, %d rows of %d records (%d rows not scored)", out,
             selection.split, macro_f1_text(metrics[selection.split]), len(predictions),
             len(selection.records), sum(summary["unscored"].values()))
    return summary | {"metrics": metrics}


def _check_out(out: Path, bundle: Bundle) -> None:
    """`out` must not be (in) the bundle or the training evaluation's report folder."""
    source = (bundle.meta.get("metrics") or {}).get("source")
    for folder in (bundle.path, *([Path(source).parent] if source else [])):
        if out.resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"--out {out} lies in {folder}, the training run's own outputs; "
                             "leave --out out (reports/cross/...) or pick another folder")


def _counts(rows: pd.DataFrame) -> dict[str, Any]:
    """Rows scored and not scored (by reason), and the lead each record was read from."""
    leads = rows.groupby("record", sort=False)["lead"].first()
    return {"rows": len(rows), "scored": int((rows["reason"] == "").sum()),
            "unscored": dict(Counter(rows.loc[rows["reason"] != "", "reason"])),
            "leads": {str(r): (lead or None) for r, lead in leads.items()}}


def _write_rows(out: Path, rows: pd.DataFrame, summary: dict) -> None:
    """rows.csv and cross.json, first thing: a run that scores nothing still says why."""
    shutil.rmtree(out / DETAILS, ignore_errors=True)  # nothing left over from a past run
    for name in (PREDICTIONS, METRICS, HEADLINE, CONFUSION):
        (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["subject", *BASE[:6], "label", "status", "reason", "note", "pred",
               *(c for c in rows.columns if c.startswith("prob_"))]
    with atomic_path(out / ROWS) as tmp:
        rows[columns].to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
    write_json(out / SUMMARY, summary)


def _write_notes(path: Path, summary: dict, caveats: list[str]) -> None:
    lines = [f"# {summary['bundle_run']} ({summary['train_database']}) on "
             f"{summary['eval_database']}", "",
             f"- bundle {summary['bundle']}; records from {summary['folder']} "
             f"({summary['split']}: {len(summary['records'])} records)",
             f"- excluded by the database config: {summary['excluded'] or 'none'}",
             f"- rows: {summary['rows']}, scored {summary['scored']}; not scored by reason: "
             f"{summary['unscored'] or 'none'} (rows.csv)",
             "- intervals: 95 % percentile bootstrap over subjects, "
             f"{summary['n_boot']} draws"]
    if not summary["database_config"]:
        lines.append("- NO DATABASE CONFIG: each record taken as its own subject")
    lines += [f"- {note}" for note in caveats] or ["- no caveats"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _tracking(params: Any, summary: dict):
    if params is None:
        return nullcontext(None)
    from pipeline.tracking import (
        run_tracking,  # here: the command runs without mlflow when not logging
    )

    name = (f"{summary['train_database']}-on-{summary['eval_database']}/"
            f"{summary['bundle_run']}")
    tags = {"cross.train_database": summary["train_database"],
            "cross.eval_database": summary["eval_database"],
            "cross.bundle_run": summary["bundle_run"], "cross.split": summary["split"],
            "cross.bundle": summary["bundle"], "database": summary["eval_database"],
            "stage": "cross_evaluate"}
    run_params = {k: summary[k] for k in ("split_definition", "annotator", "label_mode",
                                          "n_boot", "seed", "folder")}
    return run_tracking.cross_evaluation_run(params, name, {"cross": run_params}, tags)


def _log(run_id: str, out: Path, metrics: dict) -> None:
    from pipeline.tracking import run_tracking

    run_tracking.log_cross_evaluation(run_id, out, metrics)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="models/export/<db>/<run>")
    parser.add_argument("--database", required=True, help="PhysioNet short name, e.g. svdb")
    parser.add_argument("--mirror", type=Path, help="folder holding <database>/ (default: "
                        "$ECG_PHYSIONET_MIRROR)")
    parser.add_argument("--split", choices=cross_reference.SPLITS, default="all",
                        help="all records, or the test records of the database config's split")
    parser.add_argument("--split-definition", help="split name in the config (default: its "
                        "default_split)")
    parser.add_argument("--records", nargs="+", help="these records only")
    parser.add_argument("--out", type=Path, help="default reports/cross/<train>-on-<db>/<run>")
    parser.add_argument("--annotator", help="annotation extension (default: the database "
                        "config's, else the bundle's); 'none' detects beats")
    parser.add_argument("--reference", type=Path, help="record bundles: the 'record,label' CSV")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="params.yaml: tracking: and evaluate: n_boot/seed")
    parser.add_argument("--databases-dir", type=Path, default=DATABASES_DIR)
    parser.add_argument("--n-boot", type=int, help="bootstrap draws (default evaluate.n_boot)")
    parser.add_argument("--seed", type=int, help="bootstrap seed (default evaluate.seed)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    evaluate = (read_yaml(args.params).get("evaluate") or {}) if args.params.is_file() else {}
    settings = {k: getattr(args, k) if getattr(args, k) is not None else evaluate.get(k, v)
                for k, v in DEFAULTS.items()}
    tracking_params = None
    if not args.no_mlflow:
        from pipeline.tracking import run_tracking

        if not args.params.is_file():
            raise FileNotFoundError(f"{args.params}: not found; its tracking: section names the "
                                    "MLflow experiment; pass --params or --no-mlflow")
        tracking_params = run_tracking.load_tracking(args.params)
    run(args.bundle, args.database, mirror=args.mirror, split=args.split, records=args.records,
        out=args.out, tracking_params=tracking_params, databases_dir=args.databases_dir,
        annotator=args.annotator, reference=args.reference, definition=args.split_definition,
        **settings)


def cli() -> None:
    """The installed command: errors as one line (`data_prep.cli.run_main`)."""
    run_main(main)


if __name__ == "__main__":
    cli()
