"""Find a model by name. Built-in closed-form models now; model cards join in models/."""

from __future__ import annotations

from ._base import AbstractModel
from .linear import LinearCompartmentModel

__all__ = ["BUILTIN_MODELS", "get_model", "list_models"]

BUILTIN_MODELS: dict[str, tuple[int, bool]] = {
    "one_cpt_iv": (1, False),
    "one_cpt_oral": (1, True),
    "two_cpt_iv": (2, False),
    "two_cpt_oral": (2, True),
    "three_cpt_iv": (3, False),
    "three_cpt_oral": (3, True),
}


def get_model(name: str | AbstractModel) -> AbstractModel:
    """A model instance from a built-in name (or the model itself)."""
    if isinstance(name, AbstractModel):
        return name
    try:
        n, oral = BUILTIN_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(BUILTIN_MODELS)}") from None
    return LinearCompartmentModel(n, oral, name=name)


def list_models() -> list[AbstractModel]:
    return [get_model(n) for n in BUILTIN_MODELS]
