"""Bayesian fitting with numpyro: population (NLME) and individual twins."""

from .data import FitData, Observations, merge_cohorts, nonmem_cohort
from .diagnostics import ess_bulk, ess_tail, rhat, summarize
from .fit import METHODS, Fit, fit, population_estimates, update
from .model import Observation, PopulationModel, default_prior
from .posterior import from_datatree, to_datatree

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
    "from_datatree",
    "merge_cohorts",
    "nonmem_cohort",
    "to_datatree",
    "update",
    "population_estimates",
    "rhat",
    "summarize",
]
