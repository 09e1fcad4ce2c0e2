from pathlib import Path

import pytest
import torch
import torchvision

from replearn.config import ModelConfig
from replearn.errors import UserError
from replearn.training.backbones import imagenet_weights_path
from replearn.training.model import build_model

TINY = {"d_model": 32, "heads": 2, "layers": 1, "embedding_dim": 16}


@pytest.mark.parametrize(
    ("size", "overrides"),
    [
        (32, {}),
        (48, {"pooling": "cls"}),
        (64, {"backbone": {"output_stride": 16}}),
        (96, {"layers": 2}),
    ],
)
def test_output_shape_and_unit_norm(size: int, overrides: dict) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate({**TINY, **overrides})).eval()
    with torch.no_grad():
        embeddings = model(torch.rand(3, 3, size, size))
    assert embeddings.shape == (3, 16)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


def test_model_normalises_inputs_itself() -> None:
    """The same image gives the same embedding whatever the batch: normalisation is per image, inside."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate(TINY)).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images)[1:2], model(images[1:2]), atol=1e-5, rtol=1e-4)
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_heads_must_divide_width() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        ModelConfig.model_validate({"d_model": 30, "heads": 4})


def test_imagenet_offline_names_the_expected_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("REPLEARN_OFFLINE", "1")
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_path("resnet18") == expected
    with pytest.raises(UserError, match="weights=imagenet needs .*resnet18-f37072fd.pth, which is missing.*OFFLINE"):
        build_model(ModelConfig.model_validate({**TINY, "backbone": {"weights": "imagenet"}}))


def test_imagenet_loads_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reference = torchvision.models.resnet18()
    imagenet_weights_path("resnet18").parent.mkdir(parents=True)
    torch.save(reference.state_dict(), imagenet_weights_path("resnet18"))
    model = build_model(ModelConfig.model_validate({**TINY, "backbone": {"weights": "imagenet"}}))
    torch.testing.assert_close(model.backbone[0].weight, reference.conv1.weight)


def test_state_dict_path_is_loaded_and_bad_files_are_clear_errors(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18()
    path = tmp_path / "backbone.pt"
    torch.save({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}, path)
    model = build_model(ModelConfig.model_validate({**TINY, "backbone": {"weights": str(path)}}))
    torch.testing.assert_close(model.backbone[7][1].conv2.weight, reference.layer4[1].conv2.weight)

    with pytest.raises(UserError, match="does not exist"):
        build_model(ModelConfig.model_validate({**TINY, "backbone": {"weights": str(tmp_path / "missing.pt")}}))
    wrong = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34().state_dict(), wrong)
    with pytest.raises(UserError, match="does not fit a resnet18"):
        build_model(ModelConfig.model_validate({**TINY, "backbone": {"weights": str(wrong)}}))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a loadable state_dict"):
        build_model(ModelConfig.model_validate({**TINY, "backbone": {"weights": str(junk)}}))
