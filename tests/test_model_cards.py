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


def test_a_card_added_to_the_model_path_is_found_after_a_lookup(tmp_path, monkeypatch):
    """The card directory listing is cached by the directories' modification times: a
    card added (or removed) after a lookup is seen by the next one."""
    monkeypatch.setenv("TWINRX_MODEL_PATH", str(tmp_path))
    with pytest.raises(ValueError, match="unknown model 'my_one_cpt'"):
        get_model("my_one_cpt")
    text = _card_paths()["one_cpt_iv"].read_text().replace('name = "one_cpt_iv"', 'name = "my_one_cpt"')
    (tmp_path / "my_one_cpt.toml").write_text(text)
    assert get_model("my_one_cpt").name == "my_one_cpt"
    (tmp_path / "my_one_cpt.toml").unlink()
    with pytest.raises(ValueError, match="unknown model 'my_one_cpt'"):
        get_model("my_one_cpt")
