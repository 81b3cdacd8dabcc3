"""Test-only stand-in packages (see ../README.md); never shipped.

`make_stand_in(__name__, why)` turns a package into one whose attributes,
and every submodule's attributes, are placeholders that raise only when
called, so modules that import them at load time can be imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class Unavailable:
    def __init__(self, name: str, why: str) -> None:
        self._name, self._why = name, why

    def __getattr__(self, attr: str) -> "Unavailable":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Unavailable(f"{self._name}.{attr}", self._why)

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} was called, but it is a test stand-in: {self._why}")

    def __repr__(self) -> str:
        return f"<stand-in {self._name}>"


def _getattr_for(module_name: str, why: str):
    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Unavailable(f"{module_name}.{attr}", why)

    return __getattr__


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, package: str, why: str) -> None:
        self.package, self.why = package, why

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.package + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _getattr_for(spec.name, self.why)
        return module

    def exec_module(self, module) -> None:
        pass


def make_stand_in(package: str, why: str) -> None:
    module = sys.modules[package]
    module.__getattr__ = _getattr_for(package, why)
    if not any(isinstance(f, _Finder) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(_Finder(package, why))
