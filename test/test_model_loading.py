"""Published checkpoint layouts load with no key left over; bad files fail with clear messages."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import save_file

from deltaworld_ros.model.config import preset, tiny
from deltaworld_ros.model.loading import (
    WeightFileError,
    fit_state_dict,
    load_published,
    load_weights,
    read_state_dict,
    save_weights,
)
from deltaworld_ros.model.store import ModelDirError, load_model, read_manifest, write_manifest
from deltaworld_ros.model.world_model import WorldModel


@pytest.fixture(scope="module")
def published_keys():
    return json.loads((FIXTURES / "vitb_checkpoint_keys.json").read_text())


@pytest.fixture(scope="module")
def vitb_model():
    with torch.device("meta"):  # shapes only: 340M parameters never allocated
        return WorldModel(preset("vitb16"))


def shapes(module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def published_shapes(published_keys, module: str) -> dict[str, list[int]]:
    return {k: v["shape"] for k, v in published_keys["modules"][module]["state_dict"].items()}


def test_vitb16_keys_and_shapes_match_the_release(vitb_model, published_keys):
    assert shapes(vitb_model.backbone) == published_shapes(
        published_keys, "backbone_hf_DINOv3ViTModel"
    )
    assert shapes(vitb_model.tokenizer) == published_shapes(published_keys, "deltatok")
    predictor = {
        f"predictor.{k}": v
        for k, v in published_shapes(published_keys, "deltaworld_predictor").items()
    }
    assert shapes(vitb_model.world) == predictor
    assert shapes(vitb_model.seg_head) == published_shapes(published_keys, "seghead_19_cityscapes")
    counts = published_keys["param_counts"]
    assert sum(p.numel() for p in vitb_model.tokenizer.parameters()) == counts["deltatok"]
    assert sum(p.numel() for p in vitb_model.world.parameters()) == counts["deltaworld_predictor"]


def random_state(spec: dict[str, list[int]], prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        prefix + k: torch.randn(shape) if shape else torch.tensor(7) for k, shape in spec.items()
    }


def test_published_files_load_with_no_key_left_over(tmp_path, published_keys):
    """The files as released: plain DeltaTok keys, `predictor.*` wrapped in {'state_dict'}, and a
    head saved from a DataParallel-style `module.` wrapper; the hub DINOv3 names `layer.N`."""
    cfg = preset("vitb16")
    hf_dir = tmp_path / "dinov3"
    hf_dir.mkdir()
    hf_cfg = published_keys["real_dinov3_vitb16_config"]["values"]
    (hf_dir / "config.json").write_text(json.dumps(hf_cfg))
    backbone = published_shapes(published_keys, "backbone_hf_DINOv3ViTModel")
    hub_names = {
        k.replace("model.layer.", "layer."): v for k, v in backbone.items()
    }  # hub file naming
    save_file(random_state(hub_names), str(hf_dir / "model.safetensors"))

    def write(name: str, state: dict[str, torch.Tensor], wrap: str) -> str:
        if wrap == "module_prefix":
            state = {f"module.{k}": v for k, v in state.items()}
        payload = {"state_dict": state} if wrap == "state_dict" else state
        torch.save(payload, tmp_path / name)
        return str(tmp_path / name)

    tok = random_state(published_shapes(published_keys, "deltatok"))
    world = random_state(published_shapes(published_keys, "deltaworld_predictor"), "predictor.")
    seg = random_state(published_shapes(published_keys, "seghead_19_cityscapes"))
    model = load_published(
        cfg, hf_dir, write("deltatok.bin", tok, "plain"),
        write("deltaworld.bin", world, "state_dict"), write("seg.bin", seg, "module_prefix"),
    )  # fmt: skip
    assert torch.equal(model.tokenizer.state_dict()["encoder_blocks.3.attention.attn_gate.weight"],
                       tok["encoder_blocks.3.attention.attn_gate.weight"])  # fmt: skip
    assert torch.equal(
        model.world.state_dict()["predictor.head.weight"], world["predictor.head.weight"]
    )
    assert model.seg_head.bn.num_batches_tracked.item() == 7


def test_mismatched_file_names_missing_unexpected_and_misshaped_keys(tmp_path):
    model = WorldModel(tiny())
    state = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["z_embed.weight"] = torch.zeros(1, 32)
    with pytest.raises(WeightFileError) as err:
        fit_state_dict(model.tokenizer, state, "deltatok.bin")
    message = str(err.value)
    assert "missing (1): norm.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "z_embed.weight: file (1, 32) vs model (1, 64)" in message


def test_corrupt_truncated_and_pickled_files_fail_clearly(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(WeightFileError, match="corrupt or truncated"):
        read_state_dict(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightFileError, match="not a readable weight file"):
        read_state_dict(garbage)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    with evil.open("wb") as f:
        pickle.dump({"w": Payload()}, f)
    with pytest.raises(WeightFileError, match="refusing to unpickle"):
        read_state_dict(evil)
    with pytest.raises(WeightFileError, match="not found"):
        read_state_dict(tmp_path / "absent.bin")


def test_package_format_round_trip_and_manifest(tmp_path, tiny_model):
    save_weights(tiny_model, tmp_path)
    write_manifest(tmp_path, tiny_model.cfg, {"source": "fixtures"})
    loaded = load_model(tmp_path)
    for (k, a), b in zip(
        tiny_model.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    weights = tmp_path / "weights" / "tokenizer.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x01" * 8)
    with pytest.raises(ModelDirError, match="does not match manifest.json"):
        read_manifest(tmp_path)
    weights.unlink()
    with pytest.raises(ModelDirError, match="missing"):
        read_manifest(tmp_path)
    with pytest.raises(WeightFileError, match="not found"):
        load_weights(tiny_model.cfg, tmp_path)
