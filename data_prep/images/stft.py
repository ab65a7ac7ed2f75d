"""The STFT image core: float signal windows -> square uint8 log-power spectrogram images.

Shared by the spectrogram stage (which writes the images) and predict (which makes them from new
records). `ImageParams` are the keys of the `spectrogram:` section (`SpectrogramParams`) that make
an image (beat windows: its own STFT keys; rhythm/record windows: those of `spectrogram.windows`);
`image_meta` says how to read the images (axes, orientation, value scale) and is written into the
stage's meta.json.

Image convention: row 0 is the highest kept frequency and the last row the lowest (low
frequencies at the bottom, as plotted); columns run forward in time from the first STFT frame
wholly inside the segment to the last (meta time_s); one grey channel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator
from scipy.signal import ShortTimeFFT, get_window

from data_prep.params import StrictModel

# 128 segments per STFT call: the complex128 STFT of a chunk is ~55 MB at the default
# params, so a worker stays near 100 MB whatever the record length.
CHUNK = 128
RESIZE_BLOCK = 8


class ImageParams(StrictModel):
    """What makes an image: the STFT, band, scaling and size keys of the `spectrogram:` section.

    The spectrogram stage writes them into its meta.json ("params"); export copies them into
    the bundle and predict makes images from them.
    """

    window: str
    nperseg: int = Field(ge=2)
    noverlap: int = Field(ge=0)
    nfft: int = Field(ge=2)
    fmin_hz: float = Field(ge=0)
    fmax_hz: float = Field(gt=0)
    dynamic_range_db: float = Field(gt=0)
    image_size: int = Field(ge=2)
    # What goes in the image channels (`data_prep.images.channels`); the defaults are today's grey
    # image, and a grey image records neither key (`recorded`), so its meta.json is unchanged.
    image: Literal["grey", "multires", "two_lead"] = "grey"
    multires_nperseg: tuple[int, int, int] = (16, 32, 64)

    @model_validator(mode="after")
    def _consistent(self) -> ImageParams:
        if self.noverlap >= self.nperseg:
            raise ValueError(f"noverlap ({self.noverlap}) must be < nperseg ({self.nperseg})")
        if self.nfft < self.nperseg:
            raise ValueError(f"nfft ({self.nfft}) must be >= nperseg ({self.nperseg})")
        if self.image != "grey" and (bad := [n for n in self.multires_nperseg
                                             if not self.hop < n <= self.nfft]):
            raise ValueError(f"multires_nperseg {bad}: each window must be longer than the hop "
                             f"nperseg - noverlap = {self.hop} (all channels share it, so their "
                             f"frames align) and at most nfft = {self.nfft}")
        if self.fmin_hz >= self.fmax_hz:
            raise ValueError(f"fmin_hz ({self.fmin_hz}) must be < fmax_hz ({self.fmax_hz})")
        try:
            get_window(self.window, self.nperseg)
        except ValueError as err:
            raise ValueError(f"window '{self.window}': {err}; "
                             "use a scipy.signal.get_window name") from None
        return self

    @property
    def hop(self) -> int:
        return self.nperseg - self.noverlap

    def recorded(self) -> dict[str, Any]:
        """The params as meta.json and bundles record them (grey: without the channel keys)."""
        skip = {"image", "multires_nperseg"} if self.image == "grey" else set()
        return self.model_dump(mode="json", exclude=skip)


class WindowSTFT(StrictModel):
    """`spectrogram.windows`: the STFT of rhythm/record-mode windows (segment.window_s, 10 s),
    which need a longer hop than 2.5 s beat windows to give about one frame per image column."""

    nperseg: int = Field(ge=2)
    noverlap: int = Field(ge=0)
    nfft: int = Field(ge=2)


class SpectrogramParams(ImageParams):
    """The `spectrogram:` section of params.yaml (see the comments there): the image params
    of beat windows, the STFT of fixed windows (`windows`), and how the stage runs (workers,
    PNGs, previews), which never changes an image."""

    windows: WindowSTFT
    workers: int = Field(ge=0)
    export_png: bool
    preview_per_class: int = Field(ge=0)

    @model_validator(mode="after")
    def _windows_consistent(self) -> SpectrogramParams:
        try:
            ImageParams.model_validate(self._image_keys() | self.windows.model_dump())
        except ValidationError as err:
            problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
            raise ValueError(f"windows: {problems}") from None
        return self

    def _image_keys(self) -> dict[str, Any]:
        return self.model_dump(include=set(ImageParams.model_fields))

    def image_params(self) -> ImageParams:
        return ImageParams.model_validate(self._image_keys())

    def for_label_mode(self, label_mode: str) -> SpectrogramParams:
        """The section as it makes `label_mode` images: beat windows keep its own STFT keys;
        rhythm and record windows take nperseg, noverlap and nfft from `windows`."""
        if label_mode == "beat":
            return self
        return self.model_validate(self.model_dump() | self.windows.model_dump())


@dataclass(frozen=True)
class Plan:
    """Everything fixed by (params, fs, segment length): STFT, band, resize taps, extents."""

    sft: ShortTimeFFT
    first: int  # index of the first STFT slice kept (slice p is centred on sample p * hop)
    frames: int  # slices kept: only those whose window lies wholly inside the segment
    band: slice  # kept FFT bins
    freq_hz: tuple[float, float]  # (bottom row, top row) bin frequencies
    time_s: tuple[float, float]  # (first column, last column) frame centres
    col_taps: tuple[np.ndarray, np.ndarray]  # per output column: left frame, weight of right
    row_taps: tuple[np.ndarray, np.ndarray]  # per output row, top first: lower bin, weight


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-tap linear interpolation with aligned end points (= ndimage.zoom order=1)."""
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
    left = np.minimum(pos.astype(np.intp), n_in - 2)
    return left, (pos - left).astype(np.float32)


Span = tuple[int, int] | None  # STFT slices [first, stop) to keep; None: every whole frame


@functools.lru_cache(maxsize=16)
def plan(params: ImageParams, fs: float, n_samples: int, span: Span = None) -> Plan:
    """Builds (and caches) the STFT and resize plan; errors say which value to change.

    `span` replaces the slices kept (slice p is centred on sample p * hop): channels of one
    image made with different window lengths and one hop keep the same frame centres."""
    if params.fmax_hz > fs / 2:
        raise ValueError(f"fmax_hz {params.fmax_hz} is above Nyquist ({fs / 2} Hz at fs={fs}); "
                         "lower spectrogram.fmax_hz or raise segment.target_fs")
    # float32 window: halves the FFT work against float64 (measured ~1.4x faster overall).
    win = get_window(params.window, params.nperseg).astype(np.float32)
    sft = ShortTimeFFT(win, hop=params.hop, fs=fs, mfft=params.nfft)
    # Frames that stick out of the segment would see a step to the zero padding: a bright
    # broadband column at each edge. Keep only frames wholly inside (as signal.spectrogram).
    first, stop = sft.lower_border_end[1], sft.upper_border_begin(n_samples)[1]
    if span is not None:
        assert first <= span[0] and span[1] <= stop, "a span keeps whole frames only"
        first, stop = span
    if stop - first < 2:
        raise ValueError(f"segments of {n_samples} samples hold {max(stop - first, 0)} whole "
                         f"STFT frame(s) of nperseg={params.nperseg}; lower spectrogram.nperseg "
                         "or noverlap, or lengthen the segment windows")
    df = sft.delta_f
    k0, k1 = math.ceil(params.fmin_hz / df - 1e-9), math.floor(params.fmax_hz / df + 1e-9)
    if k1 - k0 < 1:
        raise ValueError(f"band [{params.fmin_hz}, {params.fmax_hz}] Hz holds {k1 - k0 + 1} FFT "
                         f"bin(s) of {df:.3g} Hz; widen the band or raise spectrogram.nfft")
    size = params.image_size
    rows, weights = _taps(k1 - k0 + 1, size)
    return Plan(sft=sft, first=first, frames=stop - first, band=slice(k0, k1 + 1),
                freq_hz=(k0 * df, k1 * df), time_s=(first * sft.delta_t, (stop - 1) * sft.delta_t),
                col_taps=_taps(stop - first, size),
                row_taps=(rows[::-1].copy(), weights[::-1].copy()))


def _resize(img: np.ndarray, p: Plan) -> np.ndarray:
    """(c, F, T) -> (c, S, S) bilinear, low frequencies moved to the last row.

    Hand-written on purpose. Measured at the default params on one core: ndimage.zoom
    (order=1) ~300 img/s; two interpolation matrices via matmul ~1-4k img/s single-threaded
    but 60-250 img/s when OpenBLAS threads compete with our worker processes. Two-tap gathers
    are plain elementwise numpy (~3.6k img/s in blocks of 8, no BLAS threads) and give the
    same bits whatever the chunking.
    """
    left, w = p.col_taps
    a, b = img[..., left], img[..., left + 1]
    b -= a
    b *= w
    a += b
    low, v = p.row_taps
    top, bottom = a[:, low + 1, :], a[:, low, :]
    top -= bottom
    top *= v[:, None]
    bottom += top
    return bottom


def _chunk_images(x: np.ndarray, p: Plan, dynamic_range_db: float, out: np.ndarray) -> None:
    """STFT log power of a (c, L) chunk, scaled per image to 0..255, resized into `out`."""
    z = p.sft.stft(x, p0=p.first, p1=p.first + p.frames, axis=-1)[:, p.band]  # (c, F, T) complex
    power = np.square(z.real, dtype=np.float32)
    power += np.square(z.imag, dtype=np.float32)
    peak = power.max(axis=(1, 2), keepdims=True)
    # A silent segment has peak 0: reference it to 1 so it maps to the floor (black), not NaN.
    peak = np.where(peak > 0, peak, np.float32(1))
    np.maximum(power, peak * np.float32(10 ** (-dynamic_range_db / 10)), out=power)
    np.log10(power, out=power)
    power -= np.log10(peak)  # log10 power re image max: [-range/10, 0]
    power *= np.float32(2550 / dynamic_range_db)
    power += np.float32(255)
    # Resize a few images at a time: the (b, S, S) float temporaries then stay in cache
    # (measured 3x faster than resizing all 128 at once, which is memory-bound).
    for i in range(0, len(power), RESIZE_BLOCK):
        img = _resize(power[i:i + RESIZE_BLOCK], p)
        np.clip(img, 0, 255, out=img)
        img += np.float32(0.5)  # round half up on the cast below
        np.copyto(out[i:i + RESIZE_BLOCK], img, casting="unsafe")


def iter_images(segments: np.ndarray, fs: float, params: ImageParams,
                chunk_size: int = CHUNK, span: Span = None) -> Iterator[np.ndarray]:
    """Yields uint8 (c, S, S) images for successive chunks of a (n, L) batch of segments.

    Each image depends on its own segment only: chunking never changes the result.
    """
    if segments.ndim != 2:
        raise ValueError(f"expected segments of shape (n, L), got {segments.shape}")
    p = plan(params, float(fs), segments.shape[1], span)
    size = params.image_size
    for start in range(0, len(segments), chunk_size):
        x = np.asarray(segments[start:start + chunk_size], dtype=np.float32)
        if not np.isfinite(x).all():
            bad = start + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise ValueError(f"segment row {bad} holds NaN/inf; fix the segment stage output")
        out = np.empty((len(x), size, size), dtype=np.uint8)
        _chunk_images(x, p, params.dynamic_range_db, out)
        yield out


def spectrogram_images(segments: np.ndarray, fs: float, params: ImageParams,
                       chunk_size: int = CHUNK, span: Span = None) -> np.ndarray:
    """Pure core: (n, L) float segments at `fs` Hz -> (n, S, S) uint8 spectrogram images.

    STFT (scipy ShortTimeFFT: window, nperseg, hop = nperseg - noverlap, mfft = nfft) over
    the frames wholly inside the segment; keeps bins in [fmin_hz, fmax_hz]; power in dB
    relative to the image's maximum, clipped at -dynamic_range_db, mapped linearly to
    0..255; bilinear resize to image_size squared; low frequencies at the bottom row.
    An all-zero segment gives an all-zero image.
    """
    segments = np.asarray(segments)  # a memmap stays a view: read chunk by chunk
    size = params.image_size
    out = np.empty((len(segments), size, size), dtype=np.uint8)
    start = 0
    for chunk in iter_images(segments, fs, params, chunk_size, span):
        out[start:start + len(chunk)] = chunk
        start += len(chunk)
    return out


def image_meta(params: ImageParams, fs: float, n_samples: int,
               span: Span = None) -> dict[str, Any]:
    """What a reader needs to interpret grey images (and to reproduce them on new data);
    `data_prep.images.channels.describe` describes every image kind."""
    p = plan(params, float(fs), n_samples, span)
    size = params.image_size
    return {
        "fs": fs,
        "image_size": size,
        "window_samples": n_samples,
        "stft": {"window": params.window, "nperseg": params.nperseg, "noverlap": params.noverlap,
                 "hop": params.hop, "nfft": params.nfft, "fmin_hz": params.fmin_hz,
                 "fmax_hz": params.fmax_hz, "frames": p.frames,
                 "frequency_bins": p.band.stop - p.band.start,
                 "frame_centres": "first_column s, then every hop; whole frames only"},
        "frequency_hz": {"bottom_row": p.freq_hz[0], "top_row": p.freq_hz[1],
                         "bin_hz": p.sft.delta_f},
        "time_s": {"first_column": p.time_s[0], "last_column": p.time_s[1],
                   "frame_hop_s": p.sft.delta_t},
        "orientation": f"low frequency at the bottom row: row 0 = top_row Hz, row {size - 1} = "
                       f"bottom_row Hz; column 0 = first_column s, last column = last_column s; "
                       "linear axes, bilinear resize",
        "channels": 1,
        "channel_note": "grey, one channel; the model side decides replication or in_chans=1",
        "dtype": "uint8",
        "value_scale": {"unit": "dB re the image's maximum STFT power",
                        "dynamic_range_db": params.dynamic_range_db,
                        "mapping": f"uint8 = round(255 * (dB + {params.dynamic_range_db}) / "
                                   f"{params.dynamic_range_db}) clipped to 0..255",
                        "zero": f"-{params.dynamic_range_db} dB or below; all-zero segments",
                        "255": "the image's maximum"},
    }
