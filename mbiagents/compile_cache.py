"""JAX's persistent compilation cache for ``mbi`` commands.

A short command (``mbi audit`` of a small run) otherwise spends much of its time compiling
the same XLA programs as the command before it. ``enable_compilation_cache`` points JAX's
persistent cache (``jax_compilation_cache_dir``, every program cached:
``jax_persistent_cache_min_compile_time_secs = 0``) at a folder of the user's cache:

- ``MBI_JAX_CACHE`` unset: ``$XDG_CACHE_HOME/mbiagents/jax`` (``~/.cache/mbiagents/jax``);
- ``MBI_JAX_CACHE=0`` (or ``off``, ``false``, empty): no persistent cache;
- any other value: that folder.

A ``JAX_COMPILATION_CACHE_DIR`` already set wins. Before JAX is imported the settings go
to the environment (JAX reads them on import, so nothing imports JAX early); after, to
``jax.config``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import MutableMapping

OFF = {"0", "off", "false", "no", ""}


def cache_dir(env: MutableMapping[str, str] = os.environ) -> Path | None:
    """The folder ``MBI_JAX_CACHE`` asks for (``None``: no persistent cache)."""
    value = env.get("MBI_JAX_CACHE")
    if value is None:
        base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "mbiagents" / "jax"
    return None if value.strip().lower() in OFF else Path(value).expanduser()


def enable_compilation_cache(env: MutableMapping[str, str] = os.environ) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``cache_dir`` (see the module); the
    folder used, or ``None`` when it is off or already set by ``JAX_COMPILATION_CACHE_DIR``."""
    folder = cache_dir(env)
    if folder is None or env.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    if "jax" in sys.modules:
        import jax

        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    else:
        env["JAX_COMPILATION_CACHE_DIR"] = str(folder)
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return folder
