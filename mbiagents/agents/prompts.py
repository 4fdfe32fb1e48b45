"""Prompt templates: ``mbiagents/prompts/*.md`` rendered with jinja2, in a sandbox.

A scenario overrides any template by putting a file of the same name in its prompts
directory (``[llm] prompts_dir``, a folder beside the scenario file, or the user's
``MBI_LLM_PROMPTS_DIR``); templates it does not override come from the package. Templates
are rendered with ``StrictUndefined`` (a missing variable is an error) and a ``num``
filter that prints a number compactly.

A scenario's templates are untrusted (README, "Security model"): they are rendered by
jinja2's ``ImmutableSandboxedEnvironment`` (no attribute starting with ``_``, no
mutation, no unsafe callables), with only the filters in :data:`ALLOWED_FILTERS` and the
global ``range``. Template names (also in ``include``/``import``) must be plain
``NAME.md`` files that resolve, symbolic links followed, inside the prompts folder. Every
template is compiled once per process (no re-reading or re-validation per call); a
template that cannot be compiled or rendered is a :class:`PromptError`, one line naming it.

Built-in templates: ``system.md`` (every step), ``team_report.md``, ``team_act.md``,
``task_report.md``, ``task_deliver.md``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Callable

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mbiagents.errors import MbiError

PACKAGE_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
#: The templates the games render.
TEMPLATES = ("system.md", "team_report.md", "team_act.md", "task_report.md", "task_deliver.md")
#: Filters a template may use (jinja2's others are removed).
ALLOWED_FILTERS = ("num", "abs", "round", "int", "float", "default", "join", "length", "lower", "upper", "trim",
                   "first", "last", "replace", "truncate", "min", "max", "sum")
#: What a template name must look like (no folders, no dot files).
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\.md$")


class PromptError(MbiError):
    """A prompt template is missing, invalid, or tried something the sandbox forbids."""


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.6g}"


class ConfinedLoader(jinja2.BaseLoader):
    """Loads ``NAME.md`` templates from one folder only: a name with a path, or a file that
    resolves (through a symbolic link) outside the folder, is refused."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(os.path.realpath(folder))

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        if not TEMPLATE_NAME.match(template):
            raise PromptError(f"prompt template {template!r}: a template name is NAME.md, without a folder")
        path = Path(os.path.realpath(self.folder / template))
        if path.parent != self.folder:
            raise PromptError(f"prompt template {template!r}: resolves outside the prompts folder {self.folder}")
        if not path.is_file():
            raise jinja2.TemplateNotFound(template)
        return path.read_text(encoding="utf-8"), str(path), lambda: True


@functools.lru_cache(maxsize=32)
def _environment(prompts_dir: str | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if prompts_dir is not None:
        path = Path(prompts_dir)
        if not path.is_dir():
            raise PromptError(f"prompts directory not found: {path}")
        loaders.append(ConfinedLoader(path))
    loaders.append(ConfinedLoader(PACKAGE_PROMPTS))
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # compiled once: no stat of the file per call
    )
    filters = {name: env.filters[name] for name in ALLOWED_FILTERS if name in env.filters}
    filters["num"] = _num
    env.filters = filters
    env.globals = {"range": env.globals["range"]}
    return env


@functools.lru_cache(maxsize=256)
def template(name: str, prompts_dir: str | None = None) -> jinja2.Template:
    """The compiled template ``name`` (cached per process); ``PromptError`` if it cannot be."""
    try:
        return _environment(prompts_dir).get_template(name)
    except PromptError:
        raise
    except jinja2.TemplateNotFound as exc:
        raise PromptError(f"prompt template {name!r}: not found ({exc.message})") from None
    except jinja2.TemplateError as exc:
        raise PromptError(f"prompt template {name!r}: {_first_line(exc)}") from None


def check_templates(prompts_dir: str | Path | None) -> None:
    """Compile every template the games use (before a run writes anything)."""
    for name in TEMPLATES:
        template(name, str(prompts_dir) if prompts_dir is not None else None)


def render(name: str, context: dict[str, Any], prompts_dir: str | Path | None = None) -> str:
    """Render template ``name`` (e.g. ``"team_report.md"``) with ``context``, in the sandbox."""
    tpl = template(name, str(prompts_dir) if prompts_dir is not None else None)
    try:
        return tpl.render(**context).strip() + "\n"
    except PromptError:
        raise
    except jinja2.TemplateError as exc:  # SecurityError, UndefinedError, ...
        raise PromptError(f"prompt template {name!r}: {_first_line(exc)}") from None
    except (TypeError, ValueError, ArithmeticError, AttributeError, LookupError, OverflowError) as exc:
        raise PromptError(f"prompt template {name!r}: {type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
