"""The README's Python examples run as shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i, capsys):
    exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), {})
    assert capsys.readouterr().out.strip()  # every example prints its result
