"""Test tones: write a sine WAV and find the dominant frequency of a recording.

Pure Python (no numpy): detection runs the Goertzel algorithm over a list of candidate
frequencies on (at most) one second of audio, which is plenty to tell "the 440 Hz tone the
other side sent" from silence, noise or a different tone.

Typical use in an interop test::

    write_tone(src, 440.0, seconds=6.0)
    ...  # phone A plays src, phone B records rec.wav
    result = analyse_wav(rec)
    assert result.is_tone(440.0), result
"""

from __future__ import annotations

import array
import math
import sys
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Candidate frequencies scanned by default: 100 Hz to 3400 Hz (telephone band) every 10 Hz.
DEFAULT_CANDIDATES: tuple[float, ...] = tuple(float(f) for f in range(100, 3401, 10))


def write_tone(
    path: str | Path,
    freq: float,
    seconds: float = 5.0,
    *,
    rate: int = 8000,
    channels: int = 1,
    amplitude: float = 0.5,
) -> Path:
    """Write a 16-bit PCM WAV holding a sine of ``freq`` Hz and return its path.

    The default (8 kHz mono) is what baresip's ``aufile`` source and G.711 expect.
    ``amplitude`` is a fraction of full scale (0..1).
    """
    if not 0.0 < amplitude <= 1.0:
        raise ValueError("amplitude must be in (0, 1]")
    path = Path(path)
    nframes = round(seconds * rate)
    peak = amplitude * 32767.0
    step = 2.0 * math.pi * freq / rate
    samples = array.array("h")
    for n in range(nframes):
        value = round(peak * math.sin(step * n))
        for _ in range(channels):
            samples.append(value)
    if sys.byteorder != "little":
        samples.byteswap()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def ulaw_encode_sample(sample: int) -> int:
    """G.711 mu-law encode one signed 16-bit sample (ITU-T G.711, with the usual bias)."""
    bias = 0x84
    clip = 32635
    sign = 0x80 if sample < 0 else 0x00
    magnitude = min(abs(sample), clip) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ulaw_decode_sample(byte: int) -> int:
    """G.711 mu-law decode one byte to a signed 16-bit sample."""
    byte = ~byte & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if sign else magnitude


def write_ulaw_tone(
    path: str | Path, freq: float, seconds: float = 5.0, *, amplitude: float = 0.5
) -> Path:
    """Write headerless 8 kHz G.711 mu-law (PCMU) of a sine, as sipp's ``rtp_stream`` plays."""
    path = Path(path)
    peak = amplitude * 32767.0
    step = 2.0 * math.pi * freq / 8000
    data = bytes(
        ulaw_encode_sample(round(peak * math.sin(step * n))) for n in range(round(seconds * 8000))
    )
    path.write_bytes(data)
    return path


def read_mono(path: str | Path) -> tuple[list[float], int]:
    """Read a 16-bit PCM WAV as mono samples scaled to -1..1; return (samples, rate).

    Multi-channel files are mixed down by averaging the channels.
    """
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            bits = 8 * w.getsampwidth()
            raise ValueError(f"{path}: only 16-bit PCM is supported, not {bits}-bit")
        channels = w.getnchannels()
        rate = w.getframerate()
        raw = w.readframes(w.getnframes())
    data = array.array("h")
    data.frombytes(raw[: len(raw) - len(raw) % 2])
    if sys.byteorder != "little":
        data.byteswap()
    if channels == 1:
        return [s / 32768.0 for s in data], rate
    mono = [
        sum(data[i : i + channels]) / (32768.0 * channels)
        for i in range(0, len(data) - channels + 1, channels)
    ]
    return mono, rate


def rms(samples: Sequence[float]) -> float:
    """Root mean square of ``samples`` (0.0 for an empty sequence)."""
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def goertzel_power(samples: Sequence[float], rate: int, freq: float) -> float:
    """Power of ``freq`` in ``samples`` (Goertzel), normalised by the squared length."""
    n = len(samples)
    if n == 0:
        return 0.0
    coeff = 2.0 * math.cos(2.0 * math.pi * freq / rate)
    s_prev = 0.0
    s_prev2 = 0.0
    for x in samples:
        s = x + coeff * s_prev - s_prev2
        s_prev2 = s_prev
        s_prev = s
    power = s_prev2 * s_prev2 + s_prev * s_prev - coeff * s_prev * s_prev2
    return power / (n * n)


@dataclass(frozen=True)
class ToneResult:
    """What :func:`analyse_wav` found in a recording.

    ``freq`` is the candidate with most energy, ``rms`` the RMS (full scale = 1.0) of the
    analysed window, ``purity`` the share of the window's energy at ``freq`` (a clean sine
    gives about 1.0, noise or speech much less), ``seconds`` the total recorded duration.
    """

    freq: float
    rms: float
    purity: float
    seconds: float

    def is_tone(
        self,
        expected: float,
        *,
        tolerance: float = 15.0,
        min_rms: float = 0.02,
        min_purity: float = 0.5,
    ) -> bool:
        """True if the recording is a clear tone within ``tolerance`` Hz of ``expected``."""
        return (
            abs(self.freq - expected) <= tolerance
            and self.rms >= min_rms
            and self.purity >= min_purity
        )


def dominant_frequency(
    samples: Sequence[float],
    rate: int,
    candidates: Iterable[float] = DEFAULT_CANDIDATES,
) -> tuple[float, float]:
    """Return (candidate with most energy, its share of the total energy)."""
    best_f = 0.0
    best_p = -1.0
    for f in candidates:
        if f >= rate / 2:
            continue
        p = goertzel_power(samples, rate, f)
        if p > best_p:
            best_f, best_p = f, p
    total = rms(samples) ** 2
    # A full-scale-normalised sine of amplitude A has Goertzel power A^2/4 and mean square A^2/2.
    purity = min(1.0, 2.0 * best_p / total) if total > 0 else 0.0
    return best_f, purity


def ulaw_to_samples(data: bytes) -> list[float]:
    """Decode G.711 mu-law bytes (e.g. concatenated PCMU RTP payloads) to samples in -1..1."""
    return [ulaw_decode_sample(b) / 32768.0 for b in data]


def analyse_samples(
    samples: Sequence[float],
    rate: int = 8000,
    *,
    candidates: Iterable[float] = DEFAULT_CANDIDATES,
) -> ToneResult:
    """Like :func:`analyse_wav` on in-memory samples (whole sequence, no window search)."""
    level = rms(samples)
    freq, purity = dominant_frequency(samples, rate, candidates)
    return ToneResult(
        freq=freq if level > 0 else 0.0,
        rms=level,
        purity=purity,
        seconds=len(samples) / rate if rate else 0.0,
    )


def analyse_wav(
    path: str | Path,
    *,
    window_seconds: float = 1.0,
    skip_seconds: float | None = None,
    candidates: Iterable[float] = DEFAULT_CANDIDATES,
) -> ToneResult:
    """Find the dominant frequency and RMS of a recording.

    The analysed window is ``window_seconds`` long. By default it is taken from the loudest
    part of the recording (scanning in half-window steps), so leading silence while a call
    is being set up does not hide the tone; pass ``skip_seconds`` to fix its start instead.
    """
    samples, rate = read_mono(path)
    seconds = len(samples) / rate if rate else 0.0
    win = max(1, int(window_seconds * rate))
    if skip_seconds is not None:
        start = int(skip_seconds * rate)
        window = samples[start : start + win]
    elif len(samples) <= win:
        window = samples
    else:
        best_start, best_rms = 0, -1.0
        for start in range(0, len(samples) - win + 1, max(1, win // 2)):
            r = rms(samples[start : start + win])
            if r > best_rms:
                best_start, best_rms = start, r
        window = samples[best_start : best_start + win]
    level = rms(window)
    freq, purity = dominant_frequency(window, rate, candidates)
    if level == 0.0:
        freq = 0.0
    return ToneResult(freq=freq, rms=level, purity=purity, seconds=seconds)
