"""The model language: the abstract model, model cards, closed-form linear models, the library."""

from ._base import AbstractModel, Output, Parameter
from .card import CardError, CardModel, load_card
from .library import BUILTIN_MODELS, get_model, list_models
from .linear import ClosedFormSystem, LinearCompartmentModel
from .residual import ResidualError

__all__ = [
    "AbstractModel",
    "BUILTIN_MODELS",
    "CardError",
    "CardModel",
    "ClosedFormSystem",
    "LinearCompartmentModel",
    "Output",
    "Parameter",
    "ResidualError",
    "get_model",
    "list_models",
    "load_card",
]
