"""A model directory: weights/ (+ onnx/ once exported) and a manifest.json that pins them.

manifest.json = {"format", "config" (ModelConfig), "files" {relative path: sha256},
"provenance" {...}}. Every file is checked against its hash before anything loads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ModelConfig

if TYPE_CHECKING:
    from .world_model import WorldModel

MANIFEST = "manifest.json"
FORMAT = "deltaworld-model/1"


class ModelDirError(RuntimeError):
    """A model directory whose manifest is missing, unreadable, or does not match its files."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Manifest:
    directory: Path
    config: ModelConfig
    files: dict[str, str]  # relative path -> sha256
    provenance: dict[str, Any] = field(default_factory=dict)

    def path(self, relative: str) -> Path:
        return self.directory / relative

    def has(self, relative: str) -> bool:
        return relative in self.files


def write_manifest(directory: str | Path, cfg: ModelConfig, provenance: dict[str, Any]) -> Manifest:
    """Hash every file under `directory` (except the manifest) and write manifest.json."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = Manifest(directory, cfg, files, provenance)
    body = {"format": FORMAT, "config": cfg.to_dict(), "files": files, "provenance": provenance}
    (directory / MANIFEST).write_text(json.dumps(body, indent=1) + "\n")
    return manifest


def read_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """Parse manifest.json; with `verify`, every listed file must exist and match its sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelDirError(
            f"no {MANIFEST} in model directory {directory} (export or train one first)"
        )
    try:
        body = json.loads(path.read_text())
        if body.get("format") != FORMAT:
            raise ModelDirError(f"{path}: format {body.get('format')!r}, expected {FORMAT!r}")
        manifest = Manifest(directory, ModelConfig.from_dict(body["config"]), dict(body["files"]),
                            dict(body.get("provenance", {})))  # fmt: skip
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ModelDirError(f"{path} is not a valid manifest: {err}") from err
    if verify:
        for relative, expected in manifest.files.items():
            file = directory / relative
            if not file.is_file():
                raise ModelDirError(f"{file} is listed in {MANIFEST} but missing")
            actual = sha256(file)
            if actual != expected:
                raise ModelDirError(
                    f"{file} does not match {MANIFEST} (sha256 {actual[:12]}..., expected "
                    f"{expected[:12]}...): the file is corrupt or was replaced; re-export the model"
                )
    return manifest


def weight_path(directory: str | Path, module: str) -> Path:
    return Path(directory) / "weights" / f"{module}.safetensors"


def load_model(directory: str | Path) -> WorldModel:
    """Verified manifest + this package's weight files -> WorldModel in eval mode."""
    from .loading import load_weights  # torch: only for the torch side

    manifest = read_manifest(directory)
    return load_weights(manifest.config, manifest.directory)


def default_model_dir() -> Path:
    """The embedded default model: $DELTAWORLD_MODEL, the ament share dir, or the source tree."""
    if os.environ.get("DELTAWORLD_MODEL"):
        return Path(os.environ["DELTAWORLD_MODEL"])
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("deltaworld_ros")) / "models" / "default"
        if share.is_dir():
            return share
    except (ImportError, LookupError, ValueError, OSError):  # OSError: no AMENT_PREFIX_PATH
        pass
    return Path(__file__).resolve().parents[2] / "models" / "default"
