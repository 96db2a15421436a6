"""Repository-level pytest configuration.

The shared embedded-model cache: tests use ``$TP_CACHE_DIR`` when it is set (CI sets it), else the
user's default cache, so the GGUF -> safetensors conversion happens once per machine, not per test.
"""

pytest_plugins = ["pytester"]
