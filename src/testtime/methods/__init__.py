"""Test-time methods behind one interface; one file per method, registered by name.

``list_methods()`` lists them; ``create_method(name, model, **config_overrides)`` builds one. Every
module of this package is imported here, so a new file with ``@register_method`` is registered (and
picked up by the contract tests) without editing any list.
"""

import importlib
import pkgutil

from testtime.methods.base import (
    METHODS,
    Method,
    MethodConfig,
    Requirements,
    create_method,
    list_methods,
    register_method,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "Method", "MethodConfig", "Requirements", "create_method", "list_methods", "register_method"]
