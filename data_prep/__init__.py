"""Record-side stages: fetch -> segment -> split -> spectrogram. Never imports torch."""
