"""Beat shape against the patient's own typical beat, shared by the segment stage and predict.

Inter-patient classification fails where a model learns what the training patients' beats look
like: electrode placement, lead and body shape change every patient's QRS. What carries over is
how far a beat departs from the same patient's usual beat: a ventricular beat's QRS differs
sharply from it, a supraventricular beat's QRS matches it while its P wave and timing do not.
These features measure that departure against the record's template (the sample-wise median of
its beat windows), so they are on one scale for every patient, lead and gain.

Per beat (`beat_features`, all positive, unitless; regions relative to the beat's fiducial):
    qrs_dissimilarity, beat_dissimilarity, p_dissimilarity, t_dissimilarity
                        1 - Pearson correlation with the template over the QRS (+-100 ms), the
                        whole beat (-250..+400 ms), the P-wave region (-250..-80 ms) and the
                        ST-T region (+100..+400 ms)
    qrs_amplitude_ratio peak-to-peak of the QRS / the template's
    qrs_energy_ratio    QRS energy / the template's
    qrs_slope_ratio     steepest QRS slope / the template's
    qrs_difference, beat_difference
                        RMS of beat - template over the QRS / the whole beat, in units of the
                        template's QRS peak-to-peak

On mitdb DS1 out-of-fold validation (4 patient folds; the test split never read), a linear
discriminant on log RR features scored macro-F1 N/S/V/F 0.440; with these nine 0.566
(S F1 0.279 -> 0.352, V 0.584 -> 0.738).

The template is the median of at most `template_beats` windows spread evenly over the record, so
memory stays bounded on a 24 h Holter and the segment stage and predict, given the same beats,
compute the same template. Values are floored at FLOOR (a beat identical to its template has
dissimilarity 0), so their logs, which the rhythm discriminant takes, stay finite.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from data_prep.params import StrictModel

FEATURES = ("qrs_dissimilarity", "beat_dissimilarity", "p_dissimilarity", "t_dissimilarity",
            "qrs_amplitude_ratio", "qrs_energy_ratio", "qrs_slope_ratio", "qrs_difference",
            "beat_difference")
FLOOR = 1e-3  # the discriminant's log floor: below it a difference means nothing
TINY = 1e-9  # a flat template (no QRS at all): ratios against it stay finite
# seconds from the fiducial (the annotated or detected beat): QRS, whole beat, P wave, ST-T
REGIONS_S = {"qrs": (-0.10, 0.10), "beat": (-0.25, 0.40), "p": (-0.25, -0.08),
             "t": (0.10, 0.40)}


class MorphologyParams(StrictModel):
    """The `segment.morphology:` section of params.yaml (see the comments there)."""

    enabled: bool
    template_beats: int = Field(ge=1)


def _span(region: str, offset: int, fs: float, length: int) -> slice:
    lo, hi = REGIONS_S[region]
    start, stop = offset + round(lo * fs), offset + round(hi * fs)
    if start < 0 or stop > length:
        raise ValueError(f"morphology region {region} ({lo:+.2f}..{hi:+.2f} s) does not fit a "
                         f"window of {length} samples with the beat at {offset}; widen "
                         "segment.beat_window_s to at least [0.25, 0.40]")
    return slice(start, stop)


def _correlation(x: np.ndarray, template: np.ndarray) -> np.ndarray:
    a = x - x.mean(axis=1, keepdims=True)
    b = template - template.mean()
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum())
    return np.where(denominator > TINY, (a @ b) / np.maximum(denominator, TINY), 0.0)


def template(windows: np.ndarray, max_beats: int) -> np.ndarray:
    """The sample-wise median of at most `max_beats` windows spread evenly over the record."""
    if windows.shape[0] == 0:
        raise ValueError("a morphology template needs at least one beat window")
    rows = np.unique(np.linspace(0, windows.shape[0] - 1, min(max_beats, windows.shape[0]))
                     .round().astype(np.int64))
    return np.median(windows[rows].astype(np.float64), axis=0)


def beat_features(windows: np.ndarray, offset: int, fs: float, params: MorphologyParams,
                  template_rows: np.ndarray | None = None) -> np.ndarray:
    """Morphology features of every beat window of one record.

    Args:
        windows: (n, L) beat windows in time order, the beat at sample `offset`.
        fs: their sampling rate in Hz.
        template_rows: the windows the template is made of (the beats the segment stage keeps:
            predict passes those in the label map); None: all.

    Returns:
        float32 (n, len(FEATURES)) in FEATURES order, finite and >= FLOOR.
    """
    n, length = windows.shape
    if n == 0:
        return np.empty((0, len(FEATURES)), np.float32)
    x = windows.astype(np.float64)
    base = x if template_rows is None else x[template_rows]
    tpl = template(base, params.template_beats)
    spans = {r: _span(r, offset, fs, length) for r in REGIONS_S}
    q, whole = spans["qrs"], spans["beat"]
    dissimilarity = [1.0 - _correlation(x[:, spans[r]], tpl[spans[r]])
                     for r in ("qrs", "beat", "p", "t")]
    tpl_ptp = max(float(np.ptp(tpl[q])), TINY)
    amplitude = np.ptp(x[:, q], axis=1) / tpl_ptp
    energy = (x[:, q] ** 2).sum(axis=1) / max(float((tpl[q] ** 2).sum()), TINY)
    slope = np.abs(np.diff(x[:, q], axis=1)).max(axis=1) / max(
        float(np.abs(np.diff(tpl[q])).max()), TINY)
    difference = [np.sqrt(((x[:, s] - tpl[s]) ** 2).mean(axis=1)) / tpl_ptp for s in (q, whole)]
    feats = np.stack([*dissimilarity, amplitude, energy, slope, *difference], axis=1)
    return np.maximum(feats, FLOOR).astype(np.float32)


def feature_names(label_mode: str, params: MorphologyParams) -> tuple[str, ...]:
    """The morphology columns of the segment index: beat mode with `enabled` only (a 10 s
    window of rhythm and record modes holds many beats, not one shape)."""
    return FEATURES if params.enabled and label_mode == "beat" else ()


def describe(label_mode: str, params: MorphologyParams) -> dict:
    """What the segment stage records in meta.json (and export copies into the bundle)."""
    return {"features": list(feature_names(label_mode, params)),
            "params": params.model_dump(mode="json"),
            "regions_s": {k: list(v) for k, v in REGIONS_S.items()},
            "definition":
                "data_prep/beats/morphology.py: against the record's median beat, unitless"}
