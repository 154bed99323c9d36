"""DESIGN.md's layering: imports go down the list, heavy dependencies live in one module."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "twinrx"
# results (the xarray schema) sits below solve: simulate returns a Dataset.
ORDER = [
    "_devices",
    "_types",
    "units",
    "model",
    "events",
    "results",
    "solve",
    "data",
    "infer",
    "scenarios",
    "cohort",
    "nca",
    "store",
    "scale",
    "plots",
    "report",
    "testing",
    "_demo",
    "cli",
]
HEAVY = {
    "diffrax": {"solve"},
    "numpyro": {"infer"},
    "zarr": {"store"},
    "dask": {"scale"},
    "pandas": {"data", "testing"},
    "pint": {"model", "units"},
    "matplotlib": {"plots"},
}


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(path: Path):
    tree = ast.parse(path.read_text())
    here = "twinrx." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = (
                    here.split(".")[: -node.level]
                    if path.name != "__init__.py"
                    else here.split(".")[: -node.level + 1 or None]
                )
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module or ""
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name


def test_imports_go_down_and_heavy_deps_stay_put():
    bad = []
    for path in SRC.rglob("*.py"):
        me = layer("twinrx." + ".".join(path.relative_to(SRC).with_suffix("").parts))
        if me == "__init__":
            continue
        for mod in imports(path):
            top = mod.split(".")[0]
            if top in HEAVY and me not in HEAVY[top]:
                bad.append(f"{path.name} imports {top}")
            if top == "twinrx" and mod.count("."):
                other = layer(mod)
                if other == "cli":
                    bad.append(f"{path.name} imports cli")
                if me in ORDER and other in ORDER and ORDER.index(other) > ORDER.index(me):
                    bad.append(f"{path.name} ({me}) imports {mod} ({other}), which is further down")
    assert not bad, bad
