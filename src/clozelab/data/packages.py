"""Where installed packages keep the data clozelab reads from them (gensim's test data, the
conversations of ``chatterbot-corpus``), found without importing the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from clozelab.core.errors import config_error


def package_dir(package: str, key: str = "task.source") -> Path:
    """The directory of installed ``package``; a ClozelabError naming ``key`` when it is absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise config_error(
            key,
            package,
            "this reads data shipped in that package, which is not installed",
            f"pip install {package.replace('_', '-')}",
        )
    return Path(next(iter(spec.submodule_search_locations)))
