"""Audio for the lab peers: G.711 µ-law, test tones and tone detection (pure Python).

The demo's phone and provider each play a sine (440 Hz and 1000 Hz) as PCMU and check what
they receive by its dominant frequency. Everything here is small and dependency-free on
purpose: it runs off the packet path (tones are encoded once, recordings analysed once after
the call), so clarity beats speed.

- µ-law follows ITU-T G.711 with the usual 0x84 bias and 32635 clip, as every phone does.
- Detection is the Goertzel algorithm evaluated at a grid of candidate frequencies over a
  window of the recording; "purity" (the share of energy at the winner) tells a tone from
  noise, silence or garbage that decrypted wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

#: PCMU clock rate and one 20 ms packet's worth of samples (RFC 3551 §4.5.14).
RATE = 8000
FRAME_SAMPLES = 160

#: Telephone band every 10 Hz: fine enough to tell 440 Hz from 1000 Hz with margin.
DEFAULT_CANDIDATES: tuple[float, ...] = tuple(float(f) for f in range(100, 3401, 10))

_BIAS = 0x84
_CLIP = 32635


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


def _decode_one(byte: int) -> int:
    byte = ~byte & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return -magnitude if sign else magnitude


# 256 entries: decoding a recording is one table lookup per byte.
_DECODE = tuple(_decode_one(b) for b in range(256))


def ulaw_encode(samples: Iterable[int]) -> bytes:
    """Signed 16-bit samples to µ-law bytes."""
    return bytes(ulaw_encode_sample(s) for s in samples)


def ulaw_decode(data: bytes) -> list[int]:
    """µ-law bytes to signed 16-bit samples."""
    table = _DECODE
    return [table[b] for b in data]


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


@dataclass(frozen=True)
class ToneAnalysis:
    """What :func:`analyse_ulaw` found: the dominant frequency, its energy share, the level."""

    #: Candidate frequency with the most energy (0.0 for silence or nothing received).
    freq: float
    #: Share of the window's energy at ``freq``: about 1.0 for a clean sine.
    purity: float
    #: RMS of the window, full scale = 1.0.
    rms: float

    def is_tone(self, expected: float, *, tolerance: float = 15.0) -> bool:
        """A clear tone near ``expected``: not silence, not noise, not another tone."""
        return abs(self.freq - expected) <= tolerance and self.rms >= 0.02 and self.purity >= 0.5


def analyse_samples(
    samples: Sequence[float],
    *,
    rate: int = RATE,
    candidates: Iterable[float] = DEFAULT_CANDIDATES,
) -> ToneAnalysis:
    """Dominant frequency of samples scaled to -1..1."""
    if not samples:
        return ToneAnalysis(0.0, 0.0, 0.0)
    mean_square = sum(s * s for s in samples) / len(samples)
    if mean_square == 0.0:
        return ToneAnalysis(0.0, 0.0, 0.0)
    best_f, best_p = 0.0, -1.0
    for f in candidates:
        if f >= rate / 2:
            continue
        p = goertzel_power(samples, f, rate)
        if p > best_p:
            best_f, best_p = f, p
    # A sine of amplitude A has Goertzel power A^2/4 here and mean square A^2/2.
    purity = min(1.0, 2.0 * best_p / mean_square)
    return ToneAnalysis(best_f, purity, math.sqrt(mean_square))


def analyse_ulaw(data: bytes, *, window_seconds: float = 0.25) -> ToneAnalysis:
    """Dominant frequency of a PCMU recording, from a window in its middle.

    A window in the middle skips the call's first and last packets (setup, hang-up), and a
    quarter second keeps the pure-Python Goertzel scan well under a second.
    """
    window = int(window_seconds * RATE)
    start = max(0, (len(data) - window) // 2)
    chunk = data[start : start + window]
    return analyse_samples([s / 32768.0 for s in ulaw_decode(chunk)])
