"""The README's Python examples run as shown (from the repository root, ``../shared`` beside
it; here in a temporary directory, so that the files they write land there)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i, capsys, tmp_path, monkeypatch):
    code = BLOCKS[i]
    if "../shared/" in code:
        if not SHARED.is_dir():
            pytest.skip("the example reads ../shared/data, which is absent")
        code = code.replace("../shared/", f"{SHARED}/")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md python block {i + 1}", "exec"), {})
    assert capsys.readouterr().out.strip()  # every example prints its result
