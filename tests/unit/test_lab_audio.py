"""gateway.lab.audio: G.711 µ-law, test tones and their detection, on synthetic signals."""

from __future__ import annotations

import itertools
import math
import wave
from pathlib import Path

import pytest

from gateway.lab.audio import (
    analyse_samples,
    analyse_ulaw,
    analyse_wav,
    dominant_frequency,
    goertzel_power,
    read_wav,
    rms,
    sine,
    tone_frames,
    ulaw_decode,
    ulaw_decode_sample,
    ulaw_encode,
    ulaw_encode_sample,
    ulaw_to_samples,
    write_tone,
    write_ulaw_tone,
)


def scaled(samples: list[int]) -> list[float]:
    return [s / 32768.0 for s in samples]


def test_ulaw_known_codes() -> None:
    assert ulaw_encode_sample(0) == 0xFF
    assert ulaw_encode_sample(32767) == 0x80  # clipped to the top segment
    assert ulaw_encode_sample(-32768) == 0x00
    assert ulaw_decode_sample(0xFF) == 0
    assert ulaw_decode_sample(0x80) == 32124
    assert ulaw_decode_sample(0x00) == -32124
    # 0x7F is "negative zero": it decodes to 0, which encodes back as 0xFF.
    assert ulaw_decode_sample(0x7F) == 0


def test_ulaw_every_code_but_negative_zero_round_trips() -> None:
    codes = bytes(b for b in range(256) if b != 0x7F)
    assert ulaw_encode(ulaw_decode(codes)) == codes
    assert ulaw_to_samples(b"\x80\x00\xff") == [32124 / 32768.0, -32124 / 32768.0, 0.0]


def test_ulaw_quantisation_error_is_within_the_segment_step() -> None:
    for v in range(-32000, 32000, 997):
        assert abs(ulaw_decode_sample(ulaw_encode_sample(v)) - v) <= max(8, abs(v) // 16), v


def test_goertzel_power_of_a_sine_is_a_quarter_of_its_amplitude_squared() -> None:
    one_khz = scaled(sine(1000.0, 8000, amplitude=0.5))
    assert math.isclose(goertzel_power(one_khz, 1000.0), 0.25**2, rel_tol=1e-4)
    assert goertzel_power(one_khz, 440.0) < 1e-20
    assert goertzel_power([], 1000.0) == 0.0
    # The rate is a keyword with the PCMU default: the same tone at 16 kHz.
    wide = scaled(sine(1000.0, 16000, rate=16000, amplitude=0.5))
    assert math.isclose(goertzel_power(wide, 1000.0, rate=16000), 0.0625, rel_tol=1e-4)


def test_dominant_frequency_of_a_1khz_tone() -> None:
    freq, purity = dominant_frequency(scaled(sine(1000.0, 8000)))
    assert freq == 1000.0
    assert purity > 0.999
    assert dominant_frequency([0.0] * 800) == (0.0, 0.0)
    assert dominant_frequency([]) == (0.0, 0.0)


def test_two_tones_share_the_energy() -> None:
    mix = [
        a + b for a, b in zip(sine(440.0, 8000), sine(1000.0, 8000, amplitude=0.25), strict=True)
    ]
    freq, purity = dominant_frequency(scaled(mix))
    assert freq == 440.0
    # 0.5^2 of 0.5^2 + 0.25^2: four fifths of the energy is at 440 Hz.
    assert math.isclose(purity, 0.8, rel_tol=1e-3)


def test_analyse_samples_and_is_tone() -> None:
    result = analyse_samples(scaled(sine(440.0, 4000)))
    assert result.freq == 440.0
    assert math.isclose(result.rms, 0.5 / math.sqrt(2), rel_tol=1e-3)
    assert result.seconds == 0.5
    assert result.is_tone(440.0) and result.is_tone(450.0)
    assert not result.is_tone(1000.0) and not result.is_tone(460.0)
    assert not analyse_samples(scaled(sine(440.0, 4000, amplitude=0.001))).is_tone(440.0)
    silence = analyse_samples([0.0] * 4000)
    assert (silence.freq, silence.purity, silence.rms) == (0.0, 0.0, 0.0)


def test_rms() -> None:
    assert rms([]) == 0.0
    assert rms([0.5, -0.5]) == 0.5


def test_sine_refuses_a_bad_amplitude() -> None:
    with pytest.raises(ValueError, match="amplitude"):
        sine(440.0, 10, amplitude=0.0)
    with pytest.raises(ValueError, match="amplitude"):
        next(tone_frames(440.0, amplitude=1.5))


def test_tone_frames_are_one_continuous_sine() -> None:
    frames = list(itertools.islice(tone_frames(440.0), 100))
    assert {len(f) for f in frames} == {160}
    assert b"".join(frames) == ulaw_encode(sine(440.0, 16000))
    # The tone repeats after one second: later frames come from the cache, unchanged.
    assert frames[50:] == frames[:50]


def test_ulaw_tone_file_is_the_frames_cut_to_length(tmp_path: Path) -> None:
    data = write_ulaw_tone(tmp_path / "t.ulaw", 440.0, 0.51).read_bytes()
    assert len(data) == 4080
    assert data == b"".join(itertools.islice(tone_frames(440.0), 26))[:4080]
    assert analyse_samples(ulaw_to_samples(data)).is_tone(440.0)


def test_analyse_ulaw_takes_the_middle() -> None:
    audio = b"\xff" * 8000 + b"".join(itertools.islice(tone_frames(1000.0), 25)) + b"\xff" * 8000
    result = analyse_ulaw(audio)
    assert result.is_tone(1000.0) and not result.is_tone(440.0)
    assert result.seconds == 2.5
    assert analyse_ulaw(b"\xff" * 4000).freq == 0.0  # µ-law silence
    assert analyse_ulaw(b"").freq == 0.0


def test_wav_round_trip_mono_and_stereo(tmp_path: Path) -> None:
    mono, rate = read_wav(write_tone(tmp_path / "m.wav", 1000.0, 0.25))
    assert rate == 8000
    assert mono == scaled(sine(1000.0, 2000))
    stereo, rate = read_wav(write_tone(tmp_path / "s.wav", 1000.0, 0.25, rate=48000, channels=2))
    assert rate == 48000
    assert stereo == scaled(sine(1000.0, 12000, rate=48000))


def test_read_wav_refuses_8_bit(tmp_path: Path) -> None:
    path = tmp_path / "8bit.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * 100)
    with pytest.raises(ValueError, match="only 16-bit PCM is supported, not 8-bit"):
        read_wav(path)


def test_analyse_wav_finds_tones(tmp_path: Path) -> None:
    r = analyse_wav(write_tone(tmp_path / "t.wav", 440.0, 2.0))
    assert r.is_tone(440.0), r
    assert r.seconds == 2.0
    r2 = analyse_wav(write_tone(tmp_path / "s.wav", 1000.0, 1.0, rate=48000, channels=2))
    assert r2.is_tone(1000.0), r2
    quiet = analyse_wav(write_tone(tmp_path / "q.wav", 440.0, 1.0, amplitude=0.001))
    assert quiet.freq == 440.0 and not quiet.is_tone(440.0)


def test_analyse_wav_window_skips_leading_silence_or_starts_where_told(tmp_path: Path) -> None:
    # Two seconds of silence (a call being set up), then one second of 1 kHz.
    path = tmp_path / "late.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 16000)
        w.writeframes(b"".join(s.to_bytes(2, "little", signed=True) for s in sine(1000.0, 8000)))
    loudest = analyse_wav(path)
    assert loudest.is_tone(1000.0), loudest
    assert loudest.seconds == 3.0
    assert analyse_wav(path, skip_seconds=0.0).freq == 0.0
    assert analyse_wav(path, skip_seconds=2.0).is_tone(1000.0)
