"""The model language: the abstract model, closed-form linear models, the library."""

from ._base import AbstractModel, Output, Parameter
from .library import BUILTIN_MODELS, get_model, list_models
from .linear import ClosedFormSystem, LinearCompartmentModel

__all__ = [
    "AbstractModel",
    "BUILTIN_MODELS",
    "ClosedFormSystem",
    "LinearCompartmentModel",
    "Output",
    "Parameter",
    "get_model",
    "list_models",
]
