"""Find a model by name or path: model cards in ``models/`` (or a user path), and the
hand-written closed-form models.

Search order for a name: a path to a ``.toml`` card; each directory of the environment
variable ``TWINRX_MODEL_PATH`` (``os.pathsep``-separated); the library ``models/`` beside
the package (a source checkout or editable install); then the built-in Python models
(``LinearCompartmentModel``), which serve when no card of that name exists.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from ._base import AbstractModel
from .card import STRUCTURES, load_card
from .linear import LinearCompartmentModel

__all__ = ["BUILTIN_MODELS", "get_model", "list_models", "model_dirs"]

# The hand-written closed forms: the structures a card can name.
BUILTIN_MODELS: dict[str, tuple[int, bool]] = dict(STRUCTURES)


def model_dirs() -> list[Path]:
    """Directories searched for cards, in order."""
    dirs = [Path(d) for d in os.environ.get("TWINRX_MODEL_PATH", "").split(os.pathsep) if d]
    here = Path(__file__).resolve()
    # a source checkout or editable install (<repo>/models), else the copy a wheel carries
    for up in (here.parents[3] / "models", here.parents[1] / "_library" / "models"):
        if up.is_dir():
            dirs.append(up)
            break
    return [d for d in dirs if d.is_dir()]


def _card_paths() -> dict[str, Path]:
    dirs = model_dirs()
    # A directory's modification time changes when a card is added, removed or renamed.
    return dict(_card_paths_cached(tuple((d, d.stat().st_mtime_ns) for d in dirs)))


@functools.lru_cache(maxsize=16)
def _card_paths_cached(dirs: tuple[tuple[Path, int], ...]) -> tuple[tuple[str, Path], ...]:
    found: dict[str, Path] = {}
    for d, _ in dirs:
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return tuple(found.items())


def get_model(name: str | os.PathLike | AbstractModel) -> AbstractModel:
    """A model from a card path, a library name, or the model itself."""
    if isinstance(name, AbstractModel):
        return name
    text = os.fspath(name)
    if text.endswith(".toml") or os.sep in text or "/" in text:
        return load_card(text)
    cards = _card_paths()
    if text in cards:
        return load_card(cards[text])
    if text in BUILTIN_MODELS:
        n, oral = BUILTIN_MODELS[text]
        return LinearCompartmentModel(n, oral, name=text)
    import difflib

    known = sorted(set(cards) | set(BUILTIN_MODELS))
    close = difflib.get_close_matches(text, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unknown model {text!r}.{hint} Library models: {', '.join(known)}; or give the path of a .toml card"
    )


def list_models() -> list[AbstractModel]:
    """Every library model: the cards, then built-ins that no card replaces."""
    cards = _card_paths()
    models: list[AbstractModel] = [load_card(p) for p in cards.values()]
    models += [get_model(n) for n in BUILTIN_MODELS if n not in cards]
    return models
