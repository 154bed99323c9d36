"""Packs the model library (``models/*.toml``) and the shipped scenarios
(``scenarios/*.toml``) into the wheel as ``twinrx/_library/``, so that an installed twinrx
finds its cards without a source checkout. Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        for folder in ("models", "scenarios"):
            dest = Path(self.build_lib) / "twinrx" / "_library" / folder
            dest.mkdir(parents=True, exist_ok=True)
            for src in sorted((ROOT / folder).glob("*.toml")):
                self.copy_file(str(src), str(dest / src.name))


setup(cmdclass={"build_py": BuildWithLibrary})
