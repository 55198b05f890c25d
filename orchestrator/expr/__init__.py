"""The one safe expression language of nero (being split into modules)."""

from .parser import *  # noqa: F403
from .parser import _QUOTES  # noqa: F401
