"""Build the optional native XTS loop (byok._xtsfast) on OpenSSL's libcrypto. Everything else
is in pyproject.toml.

The extension is optional: without a C compiler or the libcrypto headers (Debian: gcc,
python3-dev, libssl-dev), byok falls back to one ``cryptography`` context per sector (correct,
much slower); ``byok bench recover`` reports which backend ran.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "byok._xtsfast",
            ["native/xts_evp.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
