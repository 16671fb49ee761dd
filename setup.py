"""Build hook for the optional C fast path of the media worker (everything else is in
pyproject.toml). ``optional=True``: without a C compiler or Python headers the install goes on
and the worker runs its pure-Python loop."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway.media._fastpath",
            sources=["gateway/media/_fastpath.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
