"""Which hot paths run compiled (the C extensions of ``nodes/**/*.pyx``) or as their pure-Python references."""
from .loader import MODULES, PURE_ENV, load, pure_python, require, status

__all__ = ["MODULES", "PURE_ENV", "load", "pure_python", "require", "status"]
