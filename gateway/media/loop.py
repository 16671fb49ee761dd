"""Which packet loop the media workers run (the C fast path or Python), and why.

A worker decides at start-up (``gateway.media.worker._Worker``): the C loop when the
``_fastpath`` extension was built, ``GATEWAY_MEDIA_FASTPATH`` does not turn it off, and the
libsrtp pylibsrtp loaded has the major version whose signatures the C lanes call
(:func:`gateway.media.worker.fastpath_refusal`). :func:`probe_media_loop` runs the same checks
in the calling process: the workers are started with this interpreter, this package and this
environment, so they reach the same answer. The signalling process logs it at start-up and
exports it (``gateway_media_loop_info``); ``gateway audit``, which runs without a gateway,
asks the same question.

``keep_core_awake`` is served by a thread the C loop starts: on the Python loop it has no
effect, which :attr:`MediaLoop.keep_core_awake_ignored` says rather than leaving it silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["REASONS", "MediaLoop", "probe_media_loop"]

#: The reasons a loop is chosen, short and fixed (they are metric label values).
REASONS = (
    "fast path built",
    "extension not built",
    "turned off by GATEWAY_MEDIA_FASTPATH=0",
    "libsrtp signature mismatch",
    "libsrtp version unreadable",
)


@dataclass(frozen=True, slots=True)
class MediaLoop:
    """The media workers' packet loop."""

    #: "c" (the ``_fastpath`` extension) or "python" (gateway.media.worker's own loop).
    engine: Literal["c", "python"]
    #: One of :data:`REASONS`.
    reason: str
    #: More about it: the libsrtp version in use, or what is wrong with it.
    detail: str = ""
    #: ``media.keep_core_awake`` is set but the Python loop cannot honour it.
    keep_core_awake_ignored: bool = False

    def describe(self) -> str:
        """The start-up log line's text after "media loop: "."""
        if self.engine == "c":
            return f"C fast path ({self.detail or self.reason})"
        text = f"Python (reason: {self.reason}"
        text += f": {self.detail})" if self.detail else ")"
        if self.keep_core_awake_ignored:
            text += "; keep_core_awake ignored"
        return text


def probe_media_loop(keep_core_awake: bool = False) -> MediaLoop:
    """The loop a media worker started now, in this environment, would run."""
    from gateway.media import worker  # the worker's own checks, not a copy of them

    if worker._fastpath is None:
        return _python("extension not built", "", keep_core_awake)
    if not worker.fastpath_enabled():
        return _python("turned off by GATEWAY_MEDIA_FASTPATH=0", "", keep_core_awake)
    found = worker._libsrtp_version()
    refusal = worker.fastpath_refusal()
    if refusal is not None:
        reason = (
            "libsrtp version unreadable" if isinstance(found, str) else "libsrtp signature mismatch"
        )
        return _python(reason, refusal, keep_core_awake)
    text = found[1] if not isinstance(found, str) else ""
    return MediaLoop("c", "fast path built", text or "libsrtp 2")


def _python(reason: str, detail: str, keep_core_awake: bool) -> MediaLoop:
    return MediaLoop("python", reason, detail, keep_core_awake_ignored=keep_core_awake)
