"""The backbones on offer, and `weights: imagenet`: each trunk at tiny size, its ImageNet statistics, and
torchvision's download tested for real against an HTTP server on 127.0.0.1 (nothing leaves the machine)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import pytest
import torch

from replearn.config import BackboneConfig, BackboneName, ModelConfig
from replearn.errors import UserError
from replearn.training.backbones import BACKBONES, build_backbone, imagenet_weights_path, read_backbone_state
from replearn.training.model import build_model

TINY = {"d_model": 16, "heads": 2, "layers": 1, "embedding_dim": 8}
STRIDE_16 = [name for name, backbone in BACKBONES.items() if backbone.last_downsampling is not None]


def test_the_config_offers_exactly_the_backbones_built_here() -> None:
    assert set(get_args(BackboneName)) == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_imagenet_url_names_its_sha256_prefix(name: str) -> None:
    """torch.hub checks the hash only when the file name carries one: `-<hex>.pth`."""
    assert torch.hub.HASH_REGEX.search(os.path.basename(BACKBONES[name].imagenet.url))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_backbone_embeds_at_tiny_size_with_its_imagenet_statistics(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate({**TINY, "backbone": {"name": name}})).eval()
    with torch.no_grad():
        features = model.backbone(torch.rand(2, 3, 64, 64))
        embeddings = model(torch.rand(2, 3, 64, 64))
    assert features.shape[1] == model.project.in_channels and features.shape[2:] == (2, 2)
    assert embeddings.shape == (2, 8)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
    transforms = BACKBONES[name].imagenet.transforms()
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(transforms.mean))
    torch.testing.assert_close(model.std.flatten(), torch.tensor(transforms.std))


@pytest.mark.parametrize("name", STRIDE_16)
def test_output_stride_16_doubles_the_feature_map(name: str) -> None:
    trunk, _ = build_backbone(BackboneConfig(name=name, output_stride=16))
    with torch.no_grad():
        assert trunk.eval()(torch.rand(1, 3, 64, 64)).shape[2:] == (4, 4)


def test_convnext_refuses_output_stride_16() -> None:
    with pytest.raises(ValueError, match="output_stride 16 is not offered for convnext_tiny"):
        BackboneConfig(name="convnext_tiny", output_stride=16)


@pytest.mark.parametrize("name", ["efficientnet_b0", "regnet_y_400mf"])  # convnext_tiny: 110 MB, same head name
def test_a_torchvision_state_dict_loads_without_its_head(name: str, tmp_path: Path) -> None:
    """The file torchvision ships holds the classifier too; the trunk takes everything else, strictly."""
    reference = BACKBONES[name].build(weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    trunk, _ = build_backbone(BackboneConfig(name=name, weights=str(path)))
    head = BACKBONES[name].head + "."
    expected = [value for key, value in reference.state_dict().items() if not key.startswith(head)]
    loaded = list(trunk.state_dict().values())
    assert len(loaded) == len(expected)
    for value, reference_value in zip(loaded, expected, strict=True):
        torch.testing.assert_close(value, reference_value)


# --- the download, against a real HTTP server on 127.0.0.1 -------------------------------------------------


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder and records each path asked for, so a test sees whether it was reached."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class WeightServer:
    folder: Path
    url: str
    requests: list[str]

    def serve(self, name: str, payload: bytes) -> str:
        """Put `payload` on the server as `name`; its URL."""
        (self.folder / name).write_bytes(payload)
        return f"{self.url}/{name}"


@pytest.fixture
def weight_server(tmp_path: Path) -> Iterator[WeightServer]:
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(RecordingHandler, directory=str(folder))
    )
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield WeightServer(folder, f"http://127.0.0.1:{server.server_port}", server.requests)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache under TORCH_HOME, with downloads allowed (conftest forbids them by default)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("REPLEARN_OFFLINE", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def small_state_dict() -> tuple[dict[str, torch.Tensor], bytes]:
    """A few tensors standing in for the 45 MB ResNet18 file, with fc keys that must not come back."""
    state = {"conv1.weight": torch.arange(6.0).view(1, 2, 3), "fc.bias": torch.ones(2)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return state, buffer.getvalue()


def point_resnet18_at(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torchvision's ResNet18 ImageNet entry name `url` for the test's duration."""
    monkeypatch.setattr(BACKBONES["resnet18"].imagenet.value, "url", url)


IMAGENET = BackboneConfig(name="resnet18", weights="imagenet")


def test_download_checks_the_hash_fills_the_cache_and_happens_once(
    weight_server: WeightServer, hub_cache: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    state, payload = small_state_dict()
    name = f"resnet18-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    point_resnet18_at(weight_server.serve(name, payload), monkeypatch)

    loaded = read_backbone_state(IMAGENET)
    assert loaded is not None and set(loaded) == {"conv1.weight"}
    torch.testing.assert_close(loaded["conv1.weight"], state["conv1.weight"])
    assert weight_server.requests == [f"/{name}"]
    assert imagenet_weights_path("resnet18") == hub_cache / name
    assert [p.name for p in hub_cache.iterdir()] == [name] and (hub_cache / name).read_bytes() == payload
    assert "100%" in capfd.readouterr().err  # torch.hub's progress bar

    read_backbone_state(IMAGENET)
    monkeypatch.setenv("REPLEARN_OFFLINE", "1")  # a cached file needs no network
    read_backbone_state(IMAGENET)
    assert weight_server.requests == [f"/{name}"]


def test_a_file_whose_hash_does_not_match_its_name_is_refused_and_not_kept(
    weight_server: WeightServer, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, payload = small_state_dict()
    point_resnet18_at(weight_server.serve("resnet18-deadbeef.pth", payload), monkeypatch)
    with pytest.raises(UserError, match=r"resnet18-deadbeef.pth was refused, nothing was kept: invalid hash value"):
        read_backbone_state(IMAGENET)
    assert weight_server.requests == ["/resnet18-deadbeef.pth"]
    assert list(hub_cache.iterdir()) == []


def test_offline_refuses_before_any_connection(
    weight_server: WeightServer, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, payload = small_state_dict()
    url = weight_server.serve(f"resnet18-{hashlib.sha256(payload).hexdigest()[:8]}.pth", payload)
    point_resnet18_at(url, monkeypatch)
    monkeypatch.setenv("REPLEARN_OFFLINE", "1")
    with pytest.raises(UserError) as error:
        build_model(ModelConfig.model_validate({**TINY, "backbone": {"weights": "imagenet"}}))
    message = str(error.value)
    assert f"weights=imagenet needs {imagenet_weights_path('resnet18')}, which is missing" in message
    assert "REPLEARN_OFFLINE forbids downloading it" in message and f"fetch {url} on a machine with network" in message
    assert weight_server.requests == []
    assert not hub_cache.exists() or list(hub_cache.iterdir()) == []


def test_no_network_gives_the_same_message_with_the_reason(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port on 127.0.0.1 that nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    point_resnet18_at(f"http://127.0.0.1:{port}/resnet18-f37072fd.pth", monkeypatch)
    with pytest.raises(UserError, match=r"which is missing, and downloading it failed \(.*refused.*\); fetch"):
        read_backbone_state(IMAGENET)
    assert list(hub_cache.iterdir()) == []
