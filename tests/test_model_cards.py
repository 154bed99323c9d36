"""The shared check suite over every card in models/ (twinrx.testing.cards)."""

from __future__ import annotations

import pytest

from twinrx.model.library import _card_paths
from twinrx.testing.cards import CHECKS, _model

CARDS = sorted(_card_paths())


def test_library_has_cards():
    assert len(CARDS) >= 2


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("card", CARDS)
def test_card(card, check):
    out = CHECKS[check](_model(card))
    if isinstance(out, str) and out.startswith("skipped"):
        pytest.skip(out)
