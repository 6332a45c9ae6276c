"""The registry of parity fixture kinds: kind -> "module:function" computing a fixture of that kind,
``(fixture_dir, config) -> {name: tensor}``. cca/parity.py fills in its own kind; each family module
(VAR/family.py, LlamaGen/family.py) fills in its kinds when imported. Its own module, so that the entries are the
same whether cca.parity runs as ``python -m cca.parity`` or is imported."""
from __future__ import annotations

import importlib

FIXTURE_KINDS: dict[str, str] = {"cca_loss": "cca.parity:cca_loss_fixture"}
FAMILY_MODULES = ("VAR.family", "LlamaGen.family")


def register_fixture_kinds(kinds: dict[str, str]) -> None:
    """A family's fixture kinds: name -> "module:function" (imported only when such a fixture is computed)."""
    FIXTURE_KINDS.update(kinds)


def fixture_function(kind: str):
    """The function computing fixtures of ``kind``, or None for a kind no family registered."""
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    if kind not in FIXTURE_KINDS:
        return None
    module, name = FIXTURE_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)
