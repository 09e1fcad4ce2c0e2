"""The model version in production: what the promotion gate compares against and clustering uses."""

from __future__ import annotations

from zenml.client import Client
from zenml.enums import ModelStages
from zenml.models import ModelVersionResponse

from replearn.errors import UserError


def production_version(model_name: str) -> ModelVersionResponse | None:
    try:
        return Client().get_model_version(model_name, ModelStages.PRODUCTION)
    except KeyError:
        return None


def require_production_version(model_name: str) -> ModelVersionResponse:
    version = production_version(model_name)
    if version is None:
        raise UserError(
            f"there is no production version of the model '{model_name}' yet: "
            "run `zenml pipeline run training` first (or `make demo`)"
        )
    return version
