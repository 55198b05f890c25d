"""Jinja rendering of commands and job scripts (the home of jinja2).

Every value that comes from the sheet is shell-quoted by the environment's `finalize`,
so `{{ lr }}` in a command becomes `'0.01'` and `x'; rm -rf ~` stays one literal argument.
Text that is shell code by design (the rendered command, `setup` lines) is passed as
`Shell`, which `finalize` leaves as it is. Undefined variables are errors (StrictUndefined).
"""

from __future__ import annotations

import shlex
from functools import lru_cache
from pathlib import Path

from .errors import TemplateError
from .model import Shell

__all__ = ["Shell", "builtin_templates", "environment", "command_variables", "render_command", "render_template",
           "mail_environment"]


def _finalize(value: object) -> str:
    if isinstance(value, Shell):
        return str(value)
    if value is None:
        return "''"
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, float):
        from .spec import format_value

        value = format_value(value)
    return shlex.quote(str(value))


def builtin_templates() -> Path:
    here = Path(__file__).resolve().parent
    installed = here / "templates"
    return installed if installed.is_dir() else here.parent / "templates"


@lru_cache(maxsize=16)
def _environment(search: tuple[str, ...]):
    import jinja2

    loader = jinja2.FileSystemLoader(list(search)) if search else None
    return jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        keep_trailing_newline=True,
        autoescape=False,
    )


def environment(project_dir: str | None = None):
    """The Jinja environment; a project's own `templates/` overrides the built-ins by name."""
    search = []
    if project_dir and (Path(project_dir) / "templates").is_dir():
        search.append(str(Path(project_dir) / "templates"))
    search.append(str(builtin_templates()))
    return _environment(tuple(search))


def command_variables(command: str) -> set[str]:
    """The variables a command template uses; TemplateError if it does not parse."""
    import jinja2
    from jinja2 import meta

    try:
        ast = _environment(()).parse(command)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{e.message} (line {e.lineno})") from None
    return set(meta.find_undeclared_variables(ast))


@lru_cache(maxsize=256)
def _command_template(command: str):
    return _environment(()).from_string(command)


def render_command(command: str, variables: dict[str, object]) -> str:
    import jinja2

    try:
        return _command_template(command).render(**variables)
    except jinja2.UndefinedError as e:
        raise TemplateError(f"command {command!r}: {e.message}") from None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"command {command!r}: {e.message}") from None


def render_template(name: str, variables: dict[str, object], project_dir: str | None = None) -> str:
    import jinja2

    env = environment(project_dir)
    try:
        return env.get_template(name).render(**variables)
    except jinja2.TemplateNotFound:
        names = sorted(env.list_templates(filter_func=lambda n: n.endswith(".j2")))
        raise TemplateError(f"job template {name!r} not found; available: {', '.join(names)}") from None
    except jinja2.UndefinedError as e:
        raise TemplateError(f"template {name!r}: {e.message}") from None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template {name!r} line {e.lineno}: {e.message}") from None


def mail_environment(search: tuple[str, ...]):
    """A Jinja environment for e-mail templates: HTML-escaped (`*.html.j2`), not shell-quoted."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(search)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
    )
