"""Prompt templates: ``mbiagents/prompts/*.md`` rendered with jinja2.

A scenario overrides any template by putting a file of the same name in its prompts
directory (``[llm] prompts_dir`` or ``MBI_LLM_PROMPTS_DIR``); templates it does not
override come from the package. Templates are rendered with ``StrictUndefined`` (a missing
variable is an error) and a ``num`` filter that prints a number compactly.

Built-in templates: ``system.md`` (every step), ``team_report.md``, ``team_act.md``,
``task_report.md``, ``task_deliver.md``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

PACKAGE_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.6g}"


@functools.lru_cache(maxsize=32)
def _environment(prompts_dir: str | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if prompts_dir is not None:
        path = Path(prompts_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"prompts directory not found: {path}")
        loaders.append(jinja2.FileSystemLoader(str(path)))
    loaders.append(jinja2.FileSystemLoader(str(PACKAGE_PROMPTS)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env


def render(name: str, context: dict[str, Any], prompts_dir: str | Path | None = None) -> str:
    """Render template ``name`` (e.g. ``"team_report.md"``) with ``context``."""
    env = _environment(str(prompts_dir) if prompts_dir is not None else None)
    return env.get_template(name).render(**context).strip() + "\n"
