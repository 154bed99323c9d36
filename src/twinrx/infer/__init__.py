"""Bayesian fitting with numpyro: population (NLME) and individual twins."""

from .data import FitData, Observations
from .diagnostics import ess_bulk, ess_tail, rhat, summarize
from .fit import METHODS, Fit, fit, population_estimates
from .model import Observation, PopulationModel, default_prior

__all__ = [
    "METHODS",
    "Fit",
    "FitData",
    "Observation",
    "Observations",
    "PopulationModel",
    "default_prior",
    "ess_bulk",
    "ess_tail",
    "fit",
    "population_estimates",
    "rhat",
    "summarize",
]
