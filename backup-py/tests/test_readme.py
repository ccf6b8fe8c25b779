"""The README's examples run as they are written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import MiB, MakeImage

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_run(
    tmp_path: Path, make_image: MakeImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3
    make_image("root.img", 2 * MiB, seed=1)
    make_image("data.img", MiB, seed=2)
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "restored" / "root.img").read_bytes() == (tmp_path / "root.img").read_bytes()
    assert (tmp_path / "restored-root.img").exists()
