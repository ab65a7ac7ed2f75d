"""The public API of research scripts: load an exported bundle and classify ECG records.

    from pipeline.runtime import load_bundle
    bundle = load_bundle("models/export/mitdb/tf_mobilenetv3_small_100-frozen")
    beats = bundle.predict_record("path/to/record")   # also predict_signal, predict_folder

No torch, timm, mlflow or dvc: numpy, scipy, pandas, onnxruntime and data_prep only
(`pip install -e '.[runtime]'`). Holds the bundle format (`bundle`), the ONNX session
(`onnx_runner`), reading records (`predict_records`) and the output table (`predict_table`).
Never imports `pipeline.training` or `pipeline.tracking`; from `pipeline.evaluation` only
`record_level` (evaluate's rule for a record's windows, which predict applies too).
"""

from pipeline.runtime.bundle import BundleFormatError
from pipeline.runtime.predict import BUNDLE_ANNOTATOR, Bundle, load_bundle

__all__ = ["BUNDLE_ANNOTATOR", "Bundle", "BundleFormatError", "load_bundle"]
