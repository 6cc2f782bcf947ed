"""Settings for tests that share one set of values across methods of different kinds."""

from __future__ import annotations

from prunekit.methods.catalogue import get_method
from prunekit.methods.settings import MethodSettings


def settings_for(method: str, **values) -> MethodSettings:
    """``method``'s settings (validated) from the ``values`` its settings class has; the others
    (a width target given to a depth method, calibration given to magnitude) are left out, as
    one test's shared values are meant for several methods."""
    chosen = get_method(method)
    names = chosen.settings_type.names()
    return chosen.make_settings({k: v for k, v in values.items() if k in names})
