"""Registering Med-SA with peft, without importing peft (and torch) when `peft_medsa` itself is imported.

`import peft_medsa` must make `PeftModel.from_pretrained`, `PeftConfig.from_pretrained` and transformers'
`load_adapter` know the MEDSA method, yet the `medsa` command line must answer `--help` without spending
seconds importing torch. So the package registers at once when peft is already loaded, and otherwise as soon
as peft and the two modules Med-SA registers (`peft_medsa.config`, `peft_medsa.model`) have all finished
importing: a finder in `sys.meta_path` runs the registration after each of them loads. Trying after each of
the three matters because they import one another: peft is often first imported from inside
`peft_medsa.config`, whose classes exist only once that import is over.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

# The modules whose completed import the registration needs (`peft.mapping` is loaded by `peft`).
WATCHED = ("peft", "peft_medsa.config", "peft_medsa.model")

_loading: set[str] = set()


def register_when_ready() -> None:
    """Register now if peft is loaded, else as soon as it is (see the module docstring)."""
    if not _try_register() and not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def is_registered() -> bool:
    mapping = sys.modules.get("peft.mapping")
    return mapping is not None and "MEDSA" in mapping.PEFT_TYPE_TO_CONFIG_MAPPING


def _try_register() -> bool:
    """Register unless peft is not loaded yet or one of the watched modules is halfway through its import."""
    if is_registered():
        return True
    if "peft" not in sys.modules or _loading:
        return False
    # peft is loaded: importing the rest is cheap (torch and transformers came with it).
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )

    config = importlib.import_module("peft_medsa.config")
    model = importlib.import_module("peft_medsa.model")
    # What `peft.utils.register_peft_method` does; that function only accepts members of peft's own enum.
    PEFT_TYPE_TO_CONFIG_MAPPING[config.MEDSA_PEFT_TYPE] = config.MedSAConfig
    PEFT_TYPE_TO_TUNER_MAPPING[config.MEDSA_PEFT_TYPE] = model.MedSAModel
    PEFT_TYPE_TO_PREFIX_MAPPING[config.MEDSA_PEFT_TYPE] = model.MedSAModel.prefix
    hub = sys.modules.get("peft_medsa.hub")
    if hub is None or hasattr(hub, "use_medsa_card_in_peft"):
        importlib.import_module("peft_medsa.hub").use_medsa_card_in_peft()
    # else: peft is loading because peft_medsa.hub is being imported; hub applies the card at its end.
    return True


class _RegisterAfterImport(MetaPathFinder):
    """Wraps the loaders of the watched modules so that the registration is tried once each has loaded."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _TryAfterExec(spec.loader)
                return spec
        return None


class _TryAfterExec(Loader):
    def __init__(self, loader: Loader):
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        _loading.add(module.__name__)
        try:
            self.loader.exec_module(module)
        finally:
            _loading.discard(module.__name__)
        if _try_register():
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterImport)]

    def __getattr__(self, name: str):  # get_resource_reader, is_package, ... of the wrapped loader
        return getattr(self.loader, name)
