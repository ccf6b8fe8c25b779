"""Every public name of the package has a docstring."""

from __future__ import annotations

import inspect

import vmbackup


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    assert vmbackup.__doc__
    for name in vmbackup.__all__:
        obj = getattr(vmbackup, name)
        if name == "__version__":
            assert isinstance(obj, str)
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                # Plain class attributes (defaults such as
                # `CorruptionError.start = None`) cannot carry docstrings;
                # their class's docstring describes them.
                if attr.startswith("_") or not (
                    callable(member)
                    or inspect.isdatadescriptor(member)
                    or isinstance(member, (staticmethod, classmethod))
                ):
                    continue
                if not inspect.getdoc(member):
                    missing.append(f"{name}.{attr}")
    assert missing == []
