"""A model directory: weights/ (+ onnx/ once exported) and a manifest.json that pins them.

manifest.json = {"format", "config" (ModelConfig), "config_sha256", "files" {relative path:
sha256}, "provenance" {...}}. The manifest is checked as a whole (its schema, the config's
types and sizes, the config against its own hash, so that an edit is caught like a changed
file) and every file against its hash before anything loads it; whatever is wrong is one
ModelDirError naming the file and the field. Manifests written before config_sha256 existed
are read without that check.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .config import ModelConfig

if TYPE_CHECKING:
    from .world_model import WorldModel

MANIFEST = "manifest.json"
FORMAT = "deltaworld-model/1"


class ModelDirError(UsageError):
    """A model directory whose manifest is missing, unreadable, or does not match its files."""


def config_sha256(config: dict[str, Any]) -> str:
    """The hash of a config as JSON with sorted keys (the same for ModelConfig.to_dict() and
    the dict read back from manifest.json)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
    config = cfg.to_dict()
    body = {"format": FORMAT, "config": config, "config_sha256": config_sha256(config),
            "files": files, "provenance": provenance}  # fmt: skip
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelDirError(f"{path} is not readable JSON: {err}") from err
    manifest = _parse(directory, path, body)
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


def _parse(directory: Path, path: Path, body: Any) -> Manifest:
    """The manifest of a parsed manifest.json; ModelDirError naming the field that is wrong."""
    if not isinstance(body, dict):
        raise ModelDirError(
            f"{path}: the top level must be an object with format, config, files, got "
            f"{type(body).__name__}"
        )
    if body.get("format") != FORMAT:
        raise ModelDirError(f"{path}: format {body.get('format')!r}, expected {FORMAT!r}")
    files, provenance = body.get("files"), body.get("provenance", {})
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()
    ):
        raise ModelDirError(f"{path}: files must map relative paths to sha256 hex digests")
    if not isinstance(provenance, dict):
        raise ModelDirError(f"{path}: provenance must be an object, got {provenance!r:.60}")
    if bad := [f for f in files if Path(f).is_absolute() or ".." in Path(f).parts]:
        raise ModelDirError(f"{path}: files must stay inside the model directory, got {bad[0]}")
    try:
        config = ModelConfig.from_dict(body.get("config"))
        config.validate()
    except ValueError as err:
        raise ModelDirError(f"{path}: {err}") from err
    pinned = body.get("config_sha256")
    if pinned is not None and pinned != config_sha256(body["config"]):
        raise ModelDirError(
            f"{path}: config does not match its config_sha256 ({str(pinned)[:12]}...): it was "
            "edited after the model was written; restore it, or retrain or re-export the model"
        )
    return Manifest(directory, config, files, provenance)


def weight_path(directory: str | Path, module: str) -> Path:
    return Path(directory) / "weights" / f"{module}.safetensors"


def load_model(directory: str | Path) -> WorldModel:
    """Verified manifest + this package's weight files -> WorldModel in eval mode."""
    from .loading import WeightFileError, load_weights  # torch: only for the torch side

    manifest = read_manifest(directory)
    try:
        return load_weights(manifest.config, manifest.directory)
    except WeightFileError as err:
        raise ModelDirError(str(err)) from err


def default_model_dir() -> Path:
    """The embedded default model: $DELTAWORLD_MODEL, else models/default of the source tree
    (an installed ROS package finds its share directory first: ros.share.package_model_dir)."""
    if os.environ.get("DELTAWORLD_MODEL"):
        return Path(os.environ["DELTAWORLD_MODEL"])
    return Path(__file__).resolve().parents[2] / "models" / "default"
