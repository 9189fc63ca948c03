"""One shape for the registries users add their own classes to (gradient compressors, message encodings).

The score registry (``pruning.scores``) is the pattern: a name maps to a class, the
library's own entries register themselves with the same decorator a user would use,
and anything that accepts an entry takes either an instance or a registered name.
"""
from __future__ import annotations

from collections import OrderedDict

from ._validate import fail


class Registry:
    """Names -> subclasses of ``base``; ``public`` is how errors name the base class."""

    def __init__(self, base, public):
        self.base, self.public = base, public
        self._classes: "OrderedDict[str, type]" = OrderedDict()

    def register(self, name, cls=None, *, overwrite=False):
        """Add ``cls`` under ``name`` and set ``cls.name``; without ``cls``, a decorator that does so."""
        if not isinstance(name, str) or not name:
            fail("name", "a non-empty string", name, TypeError)

        def add(c):
            if not (isinstance(c, type) and issubclass(c, self.base)):
                fail("cls", f"a subclass of {self.public}", c, TypeError)
            if name in self._classes and not overwrite:
                fail("name", f"a new {self.base.__name__.lower()} name (pass overwrite=True to replace {name!r})",
                     name)
            c.name = name
            self._classes[name] = c
            return c

        return add if cls is None else add(cls)

    def names(self):
        """The registered names, in the order they were added."""
        return list(self._classes)

    def get(self, value, argument, allow_none=False):
        """``value`` if it is an instance (or None where allowed), else the registered class built with its defaults."""
        if (allow_none and value is None) or isinstance(value, self.base):
            return value
        if isinstance(value, str) and value in self._classes:
            return self._classes[value]()
        article = "an" if self.base.__name__[0] in "AEIOU" else "a"
        expected = (f"None, {article} {self.base.__name__}, or one of {self.names()}" if allow_none
                    else f"{article} {self.base.__name__} or one of {self.names()}")
        fail(argument, expected, value, ValueError if isinstance(value, str) else TypeError)
