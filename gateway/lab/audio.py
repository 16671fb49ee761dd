"""Audio for the lab peers and the tests: G.711 µ-law, test tones, tone detection (pure Python).

The demo's phone and provider each play a sine (440 Hz and 1000 Hz) as PCMU and check what
they receive by its dominant frequency; the interop tests write the same tones as WAV or
headerless PCMU files for baresip and sipp and analyse what those peers recorded. Everything
here is small and dependency-free on purpose: it runs off the packet path (tones are encoded
once, recordings analysed once after the call), so clarity beats speed.

- µ-law follows ITU-T G.711 with the usual 0x84 bias and 32635 clip, as every phone does;
  PCMU is 8 kHz, 20 ms per packet (RFC 3551 §4.5.14).
- Detection is the Goertzel algorithm evaluated at a grid of candidate frequencies over a
  window of the recording; "purity" (the share of energy at the winner) tells a tone from
  noise, silence or garbage that decrypted wrongly.
"""

from __future__ import annotations

import array
import itertools
import math
import sys
import wave
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: PCMU clock rate and one 20 ms packet's worth of samples (RFC 3551 §4.5.14).
RATE = 8000
FRAME_SAMPLES = 160

#: Telephone band every 10 Hz: fine enough to tell 440 Hz from 1000 Hz with margin.
DEFAULT_CANDIDATES: tuple[float, ...] = tuple(float(f) for f in range(100, 3401, 10))

_BIAS = 0x84
_CLIP = 32635


# --------------------------------------------------------------------------- G.711 µ-law


def ulaw_encode_sample(sample: int) -> int:
    """One signed 16-bit sample to one µ-law byte (G.711)."""
    sign = 0x80 if sample < 0 else 0x00
    magnitude = min(abs(sample), _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ulaw_decode_sample(byte: int) -> int:
    """One µ-law byte to one signed 16-bit sample (G.711)."""
    byte = ~byte & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return -magnitude if sign else magnitude


# 256 entries: decoding a recording is one table lookup per byte.
_DECODE = tuple(ulaw_decode_sample(b) for b in range(256))


def ulaw_encode(samples: Iterable[int]) -> bytes:
    """Signed 16-bit samples to µ-law bytes."""
    return bytes(ulaw_encode_sample(s) for s in samples)


def ulaw_decode(data: bytes) -> list[int]:
    """µ-law bytes to signed 16-bit samples."""
    table = _DECODE
    return [table[b] for b in data]


def ulaw_to_samples(data: bytes) -> list[float]:
    """µ-law bytes (e.g. concatenated PCMU RTP payloads) to samples scaled to -1..1."""
    table = _DECODE
    return [table[b] / 32768.0 for b in data]


# --------------------------------------------------------------------------- tones


def sine(freq: float, count: int, *, rate: int = RATE, amplitude: float = 0.5) -> list[int]:
    """``count`` signed 16-bit samples of a sine of ``freq`` Hz; ``amplitude`` in (0, 1]."""
    if not 0.0 < amplitude <= 1.0:
        raise ValueError("amplitude must be in (0, 1]")
    peak = amplitude * 32767.0
    step = 2.0 * math.pi * freq / rate
    return [round(peak * math.sin(step * n)) for n in range(count)]


def tone_frames(
    freq: float, *, amplitude: float = 0.5, frame_samples: int = FRAME_SAMPLES
) -> Iterator[bytes]:
    """Endless PCMU payloads of a continuous sine of ``freq`` Hz, one frame at a time.

    The phase runs on across frames, so the concatenation is one clean tone. Frames are
    cached by their phase position, since a tone at a whole number of Hz repeats after at
    most one second and encoding every frame anew would cost more than the whole call.
    """
    if not 0.0 < amplitude <= 1.0:
        raise ValueError("amplitude must be in (0, 1]")
    peak = amplitude * 32767.0
    step = 2.0 * math.pi * freq / RATE
    cache: dict[int, bytes] = {}
    position = 0
    while True:
        key = position % RATE
        frame = cache.get(key)
        if frame is None:
            frame = ulaw_encode(
                round(peak * math.sin(step * (position + n))) for n in range(frame_samples)
            )
            cache[key] = frame
        yield frame
        position += frame_samples


def write_ulaw_tone(
    path: str | Path, freq: float, seconds: float = 5.0, *, amplitude: float = 0.5
) -> Path:
    """Write headerless 8 kHz PCMU of a sine, as sipp's ``rtp_stream`` plays it."""
    path = Path(path)
    count = round(seconds * RATE)
    frames = itertools.islice(tone_frames(freq, amplitude=amplitude), -(-count // FRAME_SAMPLES))
    path.write_bytes(b"".join(frames)[:count])
    return path


def write_tone(
    path: str | Path,
    freq: float,
    seconds: float = 5.0,
    *,
    rate: int = RATE,
    channels: int = 1,
    amplitude: float = 0.5,
) -> Path:
    """Write a 16-bit PCM WAV holding a sine of ``freq`` Hz and return its path.

    The default (8 kHz mono) is what baresip's ``aufile`` source and G.711 expect.
    """
    path = Path(path)
    samples = array.array("h")
    for value in sine(freq, round(seconds * rate), rate=rate, amplitude=amplitude):
        samples.extend(itertools.repeat(value, channels))
    # WAV data is little-endian whatever the host.
    if sys.byteorder != "little":
        samples.byteswap()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def read_wav(path: str | Path) -> tuple[list[float], int]:
    """A 16-bit PCM WAV as mono samples scaled to -1..1, and its rate.

    Multi-channel files (baresip records what its sound card would play) are mixed down by
    averaging the channels.
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


# --------------------------------------------------------------------------- detection


def rms(samples: Sequence[float]) -> float:
    """Root mean square of ``samples`` (0.0 for none)."""
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def goertzel_power(samples: Sequence[float], freq: float, rate: int = RATE) -> float:
    """Power at ``freq`` in ``samples`` (Goertzel), normalised by the squared length."""
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


def dominant_frequency(
    samples: Sequence[float],
    rate: int = RATE,
    candidates: Iterable[float] = DEFAULT_CANDIDATES,
) -> tuple[float, float]:
    """The candidate with the most energy and its share of the total energy (the purity).

    Returns (0.0, 0.0) for no samples or silence.
    """
    mean_square = rms(samples) ** 2
    if mean_square == 0.0:
        return 0.0, 0.0
    best_f, best_p = 0.0, -1.0
    for f in candidates:
        if f >= rate / 2:
            continue
        p = goertzel_power(samples, f, rate)
        if p > best_p:
            best_f, best_p = f, p
    # A sine of amplitude A has Goertzel power A^2/4 here and mean square A^2/2.
    return best_f, min(1.0, 2.0 * best_p / mean_square)


@dataclass(frozen=True)
class ToneAnalysis:
    """What the analysis found in a recording or a stretch of samples."""

    #: Candidate frequency with the most energy (0.0 for silence or nothing received).
    freq: float
    #: Share of the window's energy at ``freq``: about 1.0 for a clean sine, much less for
    #: noise, speech or ciphertext read as PCMU.
    purity: float
    #: RMS of the analysed window, full scale = 1.0.
    rms: float
    #: Duration of the whole recording (not only the window), in seconds.
    seconds: float = 0.0

    def is_tone(
        self,
        expected: float,
        *,
        tolerance: float = 15.0,
        min_rms: float = 0.02,
        min_purity: float = 0.5,
    ) -> bool:
        """A clear tone within ``tolerance`` Hz of ``expected``: not silence, noise or
        another tone."""
        return (
            abs(self.freq - expected) <= tolerance
            and self.rms >= min_rms
            and self.purity >= min_purity
        )


def analyse_samples(
    samples: Sequence[float],
    *,
    rate: int = RATE,
    candidates: Iterable[float] = DEFAULT_CANDIDATES,
) -> ToneAnalysis:
    """Dominant frequency of samples scaled to -1..1 (all of them, no window search)."""
    freq, purity = dominant_frequency(samples, rate, candidates)
    return ToneAnalysis(freq, purity, rms(samples), len(samples) / rate)


def analyse_ulaw(data: bytes, *, window_seconds: float = 0.25) -> ToneAnalysis:
    """Dominant frequency of a PCMU recording, from a window in its middle.

    A window in the middle skips the call's first and last packets (setup, hang-up), and a
    quarter second keeps the pure-Python Goertzel scan well under a second.
    """
    window = int(window_seconds * RATE)
    start = max(0, (len(data) - window) // 2)
    result = analyse_samples(ulaw_to_samples(data[start : start + window]))
    return ToneAnalysis(result.freq, result.purity, result.rms, len(data) / RATE)


def analyse_wav(
    path: str | Path,
    *,
    window_seconds: float = 1.0,
    skip_seconds: float | None = None,
    candidates: Iterable[float] = DEFAULT_CANDIDATES,
) -> ToneAnalysis:
    """Dominant frequency and level of a WAV recording, from a window of it.

    By default the window is the loudest ``window_seconds`` of the recording (scanning in
    half-window steps), so the silence while a call is being set up does not hide the tone;
    ``skip_seconds`` fixes the window's start instead.
    """
    samples, rate = read_wav(path)
    win = max(1, int(window_seconds * rate))
    if skip_seconds is not None:
        start = int(skip_seconds * rate)
        window = samples[start : start + win]
    elif len(samples) <= win:
        window = samples
    else:
        starts = range(0, len(samples) - win + 1, max(1, win // 2))
        best = max(starts, key=lambda s: rms(samples[s : s + win]))
        window = samples[best : best + win]
    freq, purity = dominant_frequency(window, rate, candidates)
    return ToneAnalysis(freq, purity, rms(window), len(samples) / rate if rate else 0.0)
