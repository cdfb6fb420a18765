"""Offer our Input/Output as `djl_python`, so `from djl_python import Input, Output` works.

Only when no real `djl_python` package is installed: a user who has it keeps theirs. The alias
covers the module paths handlers import from: `djl_python`, `djl_python.inputs`,
`djl_python.outputs` and `djl_python.pair_list`.
"""

from __future__ import annotations

import importlib.util
import sys
import types

from shardserve.serving import handler

ALIAS = "djl_python"


def install_djl_alias() -> bool:
    """Register the alias modules; True when ours is now the one `import djl_python` finds."""
    existing = sys.modules.get(ALIAS)
    if existing is not None:
        return getattr(existing, "__shardserve_alias__", False)
    if importlib.util.find_spec(ALIAS) is not None:
        return False
    package = _module(ALIAS, Input=handler.Input, Output=handler.Output, PairList=handler.PairList)
    package.__path__ = []  # a package, so `import djl_python.inputs` resolves through sys.modules
    package.__shardserve_alias__ = True
    for name, attrs in (
        ("inputs", {"Input": handler.Input}),
        ("outputs", {"Output": handler.Output}),
        ("pair_list", {"PairList": handler.PairList}),
    ):
        setattr(package, name, _module(f"{ALIAS}.{name}", **attrs))
    sys.modules[ALIAS] = package
    return True


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name, f"shardserve's stand-in for {name} (DJLServing handler API)")
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module
