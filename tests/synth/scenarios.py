"""A small two-arm cohort scenario (one-compartment oral, a trough target, a population of
sex and weight) for the tests of cohort figures and reports."""


def two_arm_cohort(name: str, second_target: str, *, description: str = "") -> str:
    """The scenario's TOML text, with ``second_target`` (a ``[[targets]]`` table) added."""
    desc = f'description = "{description}"\n' if description else ""
    return f"""
[scenario]
name = "{name}"
{desc}model = "one_cpt_oral"
horizon = 48.0
step = 1.0

[[regimens]]
name = "100 mg q12h"
dose = 100
cmt = "depot"
every = 12

[[regimens]]
name = "150 mg q12h"
dose = 150
cmt = "depot"
every = 12

[[targets]]
name = "trough day 2"
output = "CP"
metric = "trough"
window = [36.0, 48.0]
low = 0.4
high = 2.0
{second_target}
[population.covariates]
SEX = {{ dist = "categorical", levels = ["F", "M"], probabilities = [0.4, 0.6] }}
WT  = {{ dist = "lognormal", median = 75, gcv = 0.2, unit = "kg" }}
"""
