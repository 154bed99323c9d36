"""twinrx: patient digital twins — mechanistic PK/PD models, NONMEM-faithful dosing."""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from ._devices import use_cpu_cores  # noqa: E402
from ._types import Status, status_message  # noqa: E402
from .events import DataError, EventTable, stack_tables  # noqa: E402
from .model import AbstractModel, LinearCompartmentModel, get_model, list_models  # noqa: E402
from .solve import simulate, simulate_arrays  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AbstractModel",
    "DataError",
    "EventTable",
    "LinearCompartmentModel",
    "Status",
    "get_model",
    "list_models",
    "simulate",
    "simulate_arrays",
    "stack_tables",
    "status_message",
    "use_cpu_cores",
]
