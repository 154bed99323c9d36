"""The shared check suite (twinrx.testing.cards) over every card in models/.

Each (card, check) pair is one test; checks that do not apply to a card are not generated
(mass balance needs a closable PK system, the closed-form comparison needs both forms)."""

from __future__ import annotations

import pytest

from twinrx.model.library import _card_paths, get_model
from twinrx.testing.cards import CHECKS

CARDS = sorted(_card_paths())


def _applies(name: str, check: str) -> bool:
    m = get_model(name)
    if check == "mass_balance":
        return "closed" in m.card.checks or m.card.kind == "pk"
    if check == "closed_form_matches_ode":
        return m.has_closed_form() and m.has_ode
    return True


PAIRS = [(card, check) for card in CARDS for check in CHECKS if _applies(card, check)]


def test_library_covers_the_issue():
    want = {
        "one_cpt_iv", "one_cpt_oral", "two_cpt_iv", "two_cpt_oral", "three_cpt_iv", "three_cpt_oral",
        "transit_savic_2007", "mm_elimination", "tmdd_qss", "emax_direct", "effect_compartment",
        "idr_1", "idr_2", "idr_3", "idr_4", "turnover", "warfarin_hamberg_2007", "vancomycin_goti_2018",
        "hr_betablocker", "bergman_minimal", "dalla_man_2007", "simeoni_2004",
    }  # fmt: skip
    assert want <= set(CARDS), sorted(want - set(CARDS))


@pytest.mark.parametrize("card, check", PAIRS, ids=[f"{c}-{k}" for c, k in PAIRS])
def test_card(card, check):
    out = CHECKS[check](get_model(card))
    assert out is None or not out.startswith("skipped"), out
