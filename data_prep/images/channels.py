"""Image kinds: which STFT of which lead goes in each channel of a spectrogram image.

Shared by the spectrogram stage (which writes the images) and predict (which makes them from new
records), so both stack the very same channels. `spectrogram.image` chooses the kind:

- `grey`: one channel, the lead at `nperseg` (`stft.spectrogram_images`, unchanged); shards
  (n, S, S). The model side copies it to RGB (grey3) or sums the stem (in_chans1).
- `multires`: three channels, the lead at the three window lengths of `multires_nperseg`
  (short to long: timing detail to frequency detail); shards (n, 3, S, S).
- `two_lead`: three channels: the lead at `nperseg`, the second lead at `nperseg` (the segment
  stage's `segment.second_leads`), and the lead at another resolution: the longest
  `multires_nperseg` window (frequency detail), or the shortest when the longest is `nperseg`
  itself (10 s windows: `spectrogram.windows` nperseg 64); shards (n, 3, S, S).

Every channel uses one hop (nperseg - noverlap; each window w gets noverlap = w - hop) and one
FFT length, and keeps the STFT slices whose longest-window frame lies wholly inside the segment:
channel k's column j and row i are then the same time and frequency in every channel. Each
channel is scaled per image as a grey image is (dB re its own maximum).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_prep.images.stft import CHUNK, ImageParams, Span, image_meta, iter_images, plan


@dataclass(frozen=True)
class Channel:
    """One image channel: the lead it shows (0: the segment's lead, 1: its second lead) and
    the STFT window length in samples."""

    lead: int
    nperseg: int


def channels(params: ImageParams) -> tuple[Channel, ...]:
    """The channels of the configured image kind, in channel order."""
    if params.image == "grey":
        return (Channel(0, params.nperseg),)
    if params.image == "multires":
        return tuple(Channel(0, n) for n in params.multires_nperseg)
    longest = max(params.multires_nperseg)
    other = longest if longest != params.nperseg else min(params.multires_nperseg)
    return Channel(0, params.nperseg), Channel(1, params.nperseg), Channel(0, other)


def leads_needed(params: ImageParams) -> int:
    """How many leads the image kind reads (2: segments must hold a second lead)."""
    return 1 + max(c.lead for c in channels(params))


def image_shape(params: ImageParams) -> tuple[int, ...]:
    """One image's array shape: (S, S) for grey, (C, S, S) for the multi-channel kinds."""
    size = params.image_size
    n = len(channels(params))
    return (size, size) if params.image == "grey" else (n, size, size)


def channel_params(params: ImageParams, nperseg: int) -> ImageParams:
    """The grey image params of one channel: its window, the shared hop and FFT length."""
    return ImageParams.model_validate({**params.model_dump(include=set(ImageParams.model_fields)),
                                       "image": "grey",
                                       "nperseg": nperseg, "noverlap": nperseg - params.hop})


def common_span(params: ImageParams, fs: float, n_samples: int) -> Span:
    """The STFT slices every channel keeps: those of the longest window (None for grey)."""
    if params.image == "grey":
        return None
    longest = channel_params(params, max(c.nperseg for c in channels(params)))
    p = plan(longest, float(fs), n_samples)
    return p.first, p.first + p.frames


def _check_leads(leads: Sequence[np.ndarray], params: ImageParams) -> None:
    need = leads_needed(params)
    if len(leads) < need:
        raise ValueError(f"image '{params.image}' needs {need} leads, got {len(leads)}; set "
                         "segment.second_leads and re-run the segment stage")
    if len({np.shape(x) for x in leads[:need]}) != 1:
        raise ValueError(f"leads of shapes {[np.shape(x) for x in leads]} differ; each lead "
                         "needs one (n, L) window per segment")


def iter_kind_images(leads: Sequence[np.ndarray], fs: float, params: ImageParams,
                     chunk_size: int = CHUNK) -> Iterator[np.ndarray]:
    """Yields uint8 images of successive chunks of segments: (c, S, S) grey or (c, C, S, S).

    Args:
        leads: one float (n, L) array of windows per lead, rows aligned (the second lead's
            row i is the same window as the first's).
        fs: their sampling rate in Hz.
        params: the image params (`image` gives the kind).
        chunk_size: segments per chunk (memory: one chunk of images).
    """
    _check_leads(leads, params)
    if params.image == "grey":
        yield from iter_images(leads[0], fs, params, chunk_size)
        return
    span = common_span(params, fs, np.shape(leads[0])[1])
    parts = [(c.lead, channel_params(params, c.nperseg)) for c in channels(params)]
    for start in range(0, len(leads[0]), chunk_size):
        stop = start + chunk_size
        yield np.stack([np.concatenate(list(iter_images(leads[lead][start:stop], fs, p,
                                                        chunk_size, span)))
                        for lead, p in parts], axis=1)


def kind_images(leads: Sequence[np.ndarray], fs: float, params: ImageParams) -> np.ndarray:
    """Pure core: every segment's image of the configured kind (see `iter_kind_images`)."""
    _check_leads(leads, params)
    chunks = list(iter_kind_images(leads, fs, params))
    if chunks:
        return np.concatenate(chunks)
    return np.empty((0, *image_shape(params)), dtype=np.uint8)


def describe(params: ImageParams, fs: float, n_samples: int) -> dict[str, Any]:
    """What a reader needs to interpret the images of any kind (meta.json and bundles).

    Grey: exactly `stft.image_meta`. Other kinds: the first channel's axes (shared by every
    channel), the channel count, and per channel its lead, window and frequency resolution.
    """
    if params.image == "grey":
        return image_meta(params, fs, n_samples)
    span = common_span(params, fs, n_samples)
    first = channels(params)[0]
    meta = image_meta(channel_params(params, first.nperseg), fs, n_samples, span)
    meta["stft"] = {k: v for k, v in meta["stft"].items() if k not in ("nperseg", "noverlap")}
    meta["stft"]["frame_centres"] = ("first_column s, then every hop; the slices whose "
                                     "longest-window frame lies wholly inside the segment")
    meta["image"] = params.image
    meta["channels"] = len(channels(params))
    meta["channel_list"] = [
        {"lead": "segment lead" if c.lead == 0 else "second lead", "nperseg": c.nperseg,
         "noverlap": c.nperseg - params.hop, "window_ms": 1000 * c.nperseg / fs,
         "resolution_hz": fs / c.nperseg} for c in channels(params)]
    meta["channel_note"] = (f"{params.image}: uint8 (C, S, S) per image, channels in "
                            "channel_list order, each scaled per image as a grey image; the "
                            "model feeds them to a 3-channel stem as they are (channels image3)")
    return meta
