"""CPU cores as JAX devices, so that a cohort runs on every core."""

from __future__ import annotations

import os

import jax

__all__ = ["use_cpu_cores"]


def use_cpu_cores(n: int | None = None) -> int:
    """Make ``n`` CPU cores (default: all) separate JAX devices and return how many.

    XLA runs one computation on one CPU thread for the small operations of a simulation,
    so by default a cohort uses one core. With several CPU devices,
    :func:`twinrx.simulate` splits a cohort's patients over them (each device runs its
    share in parallel; one compilation for all). Like ``numpyro.set_host_device_count``,
    it must be called before JAX runs its first computation, e.g. right after
    ``import twinrx``; the command line interface does it itself.

    Raises
    ------
    RuntimeError
        If JAX has already started (then restart Python and call this first).
    """
    n = int(n or os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as err:
        if len(jax.devices("cpu")) == n:
            return n
        raise RuntimeError(
            f"twinrx.use_cpu_cores({n}) must be called before JAX runs its first computation "
            f"(now {len(jax.devices('cpu'))} CPU device(s)); call it right after `import twinrx`"
        ) from err
    return n
