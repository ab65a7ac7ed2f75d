"""Where a run is recorded: MLflow (`mlflow_io`, the only module that imports mlflow), the
stages' glue to it (`run_tracking`), the tracking-server check (`server`, plain HTTP) and the
code and data a run came from (`provenance`: git commit, DVC hashes, import closures).

May import data_prep's layout and params, `pipeline.evaluation` and
`pipeline.training.run_folder` (a run folder's file names); importing this package imports
nothing (mlflow loads only with `mlflow_io`).
"""
