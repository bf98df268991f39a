"""Build the optional native XTS kernel (byok._xtsfast). Everything else is in pyproject.toml.

The extension is optional: without a C compiler or AES-NI, byok falls back to decrypting one
sector at a time with the ``cryptography`` package (correct, ~40x slower); ``byok bench recover``
reports which backend ran.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "byok._xtsfast",
            ["native/xts_aesni.c"],
            extra_compile_args=["-O3", "-maes", "-msse4.1", "-fno-strict-aliasing"],
            optional=True,
        )
    ]
)
