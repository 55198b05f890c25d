"""Jinja rendering of commands, job scripts and e-mail (the home of jinja2), sandboxed.

Every template nero renders comes from its user (a command cell, a project's
`templates/*.j2`, its e-mail overrides), so every one runs in jinja2's
`ImmutableSandboxedEnvironment`: no `_`-attributes (so no way from `cycler` to `os`),
no mutating methods, no `include`/`import`/`extends` in a command cell (job templates may
include the partials of the project's and nero's `templates/` folders). A render is
bounded (`RENDER_SECONDS` of wall time, `OUTPUT_CHARS` of text, `MAX_ITEMS` per range or
repeated sequence, `MEMORY_BYTES` more address space while rendering); past a bound it is
a TemplateError like any other, and the caller names the cell.

Every value that comes from the sheet is shell-quoted by the environment's `finalize`,
so `{{ lr }}` in a command becomes `'0.01'` and `x'; rm -rf ~` stays one literal argument.
Text that is shell code by design (the rendered command, `setup` lines) is passed as
`Shell`, which `finalize` leaves as it is. Undefined variables are errors (StrictUndefined).
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import TemplateError
from .model import Shell

__all__ = [
    "MAX_ITEMS", "MEMORY_BYTES", "OUTPUT_CHARS", "RENDER_SECONDS", "Shell", "bounded", "builtin_templates",
           "command_variables", "environment", "mail_environment", "plain_substitution", "render_command",
           "render_template", "substitution", "template_problem"]

RENDER_SECONDS = 3.0  # wall time of one render
OUTPUT_CHARS = 1 << 20  # characters one render may produce (and one value may hold)
MAX_ITEMS = 100_000  # items of a range(), of a repeated list or string
MEMORY_BYTES = 1 << 30  # address space a render may add to nero's (Linux: RLIMIT_AS)
_POWER_BITS = 1 << 14  # the largest integer `a ** b` may make (bits)


class _Bound(Exception):
    """A render went past one of the bounds above."""


def _finalize(value: object) -> str:
    _tick()
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


@lru_cache(maxsize=1)
def builtin_templates() -> Path:
    here = Path(__file__).resolve().parent
    installed = here / "templates"
    return installed if installed.is_dir() else here.parent / "templates"


# ---------------------------------------------------------------------------- the bounds
_local = threading.local()  # .deadline (monotonic seconds; 0: not rendering), .limited (memory)


def _tick() -> None:
    """The per-operation check (every call, attribute, operator and output value)."""
    deadline = getattr(_local, "deadline", 0.0)
    if deadline and time.monotonic() > deadline:
        raise _Bound(f"it ran longer than {RENDER_SECONDS:g} s")


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Bound(f"it ran longer than {RENDER_SECONDS:g} s")


@contextmanager
def bounded() -> Iterator[None]:
    """Renders inside share one address-space limit (Linux: nero's use now plus
    MEMORY_BYTES), set once for a batch of renders; each render sets it when outside one."""
    if getattr(_local, "limited", False):
        yield
        return
    _local.limited = True
    memory = _limit_memory()
    try:
        yield
    finally:
        _local.limited = False
        _restore_memory(memory)


@contextmanager
def _bounded() -> Iterator[None]:
    """Bound one render: a deadline checked at each operation, SIGALRM as the backstop
    (main thread only), the memory limit of `bounded`; a template it includes shares them."""
    if getattr(_local, "deadline", 0.0):
        yield
        return
    started = time.monotonic()
    _local.deadline = started + RENDER_SECONDS
    alarm = _start_alarm()
    try:
        with bounded():
            yield
    finally:
        _local.deadline = 0.0
        _stop_alarm(alarm, started)


def _start_alarm() -> tuple[Any, tuple[float, float]] | None:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return None
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    timer = signal.setitimer(signal.ITIMER_REAL, RENDER_SECONDS + 0.5)
    return previous, timer


def _stop_alarm(alarm: tuple[Any, tuple[float, float]] | None, started: float) -> None:
    if alarm is None:
        return
    signal.setitimer(signal.ITIMER_REAL, 0)
    previous, (delay, interval) = alarm
    signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
    if delay > 0:  # someone else's timer (pytest-timeout, say) goes on where it was
        signal.setitimer(signal.ITIMER_REAL, max(delay - (time.monotonic() - started), 0.001), interval)


def _limit_memory() -> tuple[int, int] | None:
    """Limit the address space to what nero uses now plus MEMORY_BYTES; the old limits."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = used + MEMORY_BYTES
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft != resource.RLIM_INFINITY and soft <= limit:
            return None  # already tighter: leave it
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return soft, hard
    except (OSError, ValueError):
        return None


def _restore_memory(previous: tuple[int, int] | None) -> None:
    if previous is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, previous)


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


def _environment_class() -> type:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedTemplate(jinja2.Template):
        def render(self, *args: Any, **kwargs: Any) -> str:
            with _bounded():
                out: list[str] = []
                size = 0
                for chunk in self.generate(*args, **kwargs):
                    size += len(chunk)
                    if size > OUTPUT_CHARS:
                        raise _Bound(f"its output is longer than {OUTPUT_CHARS:,} characters")
                    out.append(chunk)
                return "".join(out)

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})
        template_class = BoundedTemplate

        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.globals["range"] = _range
            self.globals.pop("lipsum", None)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            _tick()
            return super().call(__context, __obj, *args, **kwargs)

        def getattr(self, obj: Any, attribute: str) -> Any:
            _tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            _tick()
            return super().getitem(obj, argument)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _tick()
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                if right * abs(left).bit_length() > _POWER_BITS:
                    raise _Bound(f"{left} ** {right} is too large a number")
            elif operator == "*" and (isinstance(left, int) or isinstance(right, int)):
                n, times = (_sized(right), left) if isinstance(left, int) else (_sized(left), right)
                if isinstance(times, int) and n * times > OUTPUT_CHARS:
                    raise _Bound(f"repeating a value {times:,} times makes it longer than {OUTPUT_CHARS:,}")
            elif operator == "+" and _sized(left) + _sized(right) > OUTPUT_CHARS:
                raise _Bound(f"joining two values makes one longer than {OUTPUT_CHARS:,}")
            return super().call_binop(context, operator, left, right)

    return Bounded


_OUTSIDE = "is a link to a file outside the templates folders"


def _loader(search: tuple[str, ...]) -> Any:
    """A file loader that reads only files inside its folders, links resolved (a link in a
    project's `templates/` to `/etc/passwd` is refused like `../../etc/passwd`)."""
    import jinja2

    class Confined(jinja2.FileSystemLoader):
        def get_source(self, environment: Any, template: str) -> Any:
            source, filename, uptodate = super().get_source(environment, template)
            real = Path(filename).resolve()
            if not any(real.is_relative_to(Path(folder).resolve()) for folder in self.searchpath):
                raise jinja2.TemplateNotFound(template, f"{template!r} {_OUTSIDE}")
            return source, filename, uptodate

    return Confined(list(search))


def _range(*args: int) -> range:
    _tick()
    r = range(*args)
    if len(r) > MAX_ITEMS:
        raise _Bound(f"range() of {len(r):,} items; at most {MAX_ITEMS:,} are allowed")
    return r


@lru_cache(maxsize=16)
def _environment(search: tuple[str, ...]) -> Any:
    import jinja2

    loader = _loader(search) if search else None
    return _environment_class()(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _search(project_dir: str | None) -> tuple[str, ...]:
    search = []
    if project_dir and (Path(project_dir) / "templates").is_dir():
        search.append(str(Path(project_dir) / "templates"))
    search.append(str(builtin_templates()))
    return tuple(search)


def environment(project_dir: str | None = None) -> Any:
    """The Jinja environment; a project's own `templates/` overrides the built-ins by name."""
    return _environment(_search(project_dir))


def _why(e: Exception) -> str:
    """What went wrong in a render, in words (the sandbox's own messages are terse)."""
    import jinja2
    from jinja2.sandbox import SecurityError

    if isinstance(e, _Bound):
        return f"the template was stopped: {e}; templates render text, they do not compute"
    if isinstance(e, SecurityError):
        return f"not allowed in a template ({e}); use the run's variables and plain filters only"
    if isinstance(e, MemoryError):
        return f"the template was stopped: it needed more than {MEMORY_BYTES >> 20} MiB of memory"
    if isinstance(e, RecursionError):
        return "the template was stopped: it calls itself without end"
    if isinstance(e, jinja2.TemplateSyntaxError):
        return f"line {e.lineno}: {e.message}"
    if isinstance(e, jinja2.TemplateError):
        return str(e.message)
    return f"{type(e).__name__}: {e}"


_LOADS = ("Include", "Import", "FromImport", "Extends")


def command_variables(command: str) -> set[str]:
    """The variables a command template uses; TemplateError if it does not parse or loads
    another template (`include`, `import`, `extends`: a cell renders on its own)."""
    import jinja2
    from jinja2 import meta, nodes

    try:
        ast = _environment(()).parse(command)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{e.message} (line {e.lineno})") from None
    for node in ast.find_all(tuple(getattr(nodes, n) for n in _LOADS)):
        tag = {"Include": "include", "Extends": "extends"}.get(type(node).__name__, "import")
        raise TemplateError(f"a command cannot load other templates ({{% {tag} %}} on line {node.lineno}), "
                            "it is rendered on its own")
    return set(meta.find_undeclared_variables(ast))


def plain_substitution(command: str) -> bool:
    """Whether a command template only puts variables in text (`--lr {{ lr }}`: no filter,
    operator, call, test or statement), so that it renders for any scalar values if it
    renders for one set of them (a row's runs have the same variables)."""
    return substitution(command) is not None


@lru_cache(maxsize=256)
def substitution(command: str) -> tuple[int, tuple[str, ...]] | None:
    """A plain substitution (`plain_substitution`) taken apart: the characters of its text
    and the variable it puts at each place, in order (`--lr {{ lr }}`: (5, ("lr",))); None
    for any other command. Its render is that text and each value shell-quoted, so it
    fails only on an undefined variable or past OUTPUT_CHARS (what the caller can bound)."""
    import jinja2
    from jinja2 import nodes

    try:
        ast = _environment(()).parse(command)
    except jinja2.TemplateSyntaxError:
        return None
    text, names = 0, []
    for n in ast.body:
        if not isinstance(n, nodes.Output):
            return None
        for x in n.nodes:
            if isinstance(x, nodes.TemplateData):
                text += len(x.data)
            elif isinstance(x, nodes.Name):
                names.append(x.name)
            else:
                return None
    return text, tuple(names)


@lru_cache(maxsize=256)
def _command_template(command: str) -> Any:
    command_variables(command)  # refuse include/import/extends before compiling
    return _environment(()).from_string(command)


@lru_cache(maxsize=256)
def _plain_parts(command: str) -> tuple[tuple[bool, str], ...] | None:
    """A `plain_substitution` command as its pieces, (False, text) and (True, variable
    name) in order; None for any other command."""
    from jinja2 import nodes

    if not plain_substitution(command):
        return None
    command_variables(command)  # refuse include/import/extends as a render would
    ast = _environment(()).parse(command)
    return tuple((isinstance(x, nodes.Name), x.name if isinstance(x, nodes.Name) else x.data)
                 for n in ast.body for x in n.nodes)


def render_command(command: str, variables: dict[str, object]) -> str:
    """The command cell rendered with the run's variables (sandboxed, bounded). A command
    that only puts variables in text is put together without Jinja (the same text, each
    value through the same quoting: 1,000 runs of a sweep rendered 10x faster)."""
    parts = _plain_parts(command)
    if parts is not None and all(name in variables for is_name, name in parts if is_name):
        text = "".join(_finalize(variables[piece]) if is_name else piece for is_name, piece in parts)
        if len(text) <= OUTPUT_CHARS:
            return text
    try:
        return _command_template(command).render(**variables)
    except TemplateError:
        raise
    except Exception as e:  # whatever the template did, it is the template's error
        raise TemplateError(_why(e)) from None


def template_problem(name: str, project_dir: str | None = None) -> str:
    """Why `name` (a `template` cell) names no job template in the project's `templates/`
    or nero's own; empty when it does. A name that leaves those folders is refused."""
    if _leaves(name):
        return (f"{name!r} leaves the templates folders; name a file in the project's templates/ folder "
                "(or one of nero's: " + ", ".join(_job_templates(project_dir)) + ")")
    env = environment(project_dir)
    try:
        env.loader.get_source(env, name if name.endswith(".j2") else name + ".j2")
    except Exception as e:
        if _OUTSIDE in str(e):
            return f"{e}; copy the file into the project's templates/ folder"
        return (f"job template {name!r} not found in the project's templates/ folder or nero's; "
                f"available: {', '.join(_job_templates(project_dir))}")
    return ""


def _leaves(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "~")) or ".." in parts or ":" in parts[0]


def _job_templates(project_dir: str | None) -> list[str]:
    env = environment(project_dir)
    return sorted(n for n in env.list_templates(filter_func=lambda n: n.endswith(".j2"))
                  if not n.startswith(("_", "email/")))


def render_template(name: str, variables: dict[str, object], project_dir: str | None = None) -> str:
    """A job template from the project's or nero's `templates/` (sandboxed, bounded)."""
    import jinja2

    if _leaves(name):
        raise TemplateError(template_problem(name, project_dir))
    env = environment(project_dir)
    try:
        return env.get_template(name).render(**variables)
    except jinja2.TemplateNotFound as e:
        if e.name == name:
            raise TemplateError(template_problem(name, project_dir)) from None
        what = _OUTSIDE if _OUTSIDE in str(e) else "is not a file in templates/"
        raise TemplateError(f"template {name!r} includes {e.name!r}, which {what}") from None
    except Exception as e:
        raise TemplateError(f"template {name!r}: {_why(e)}") from None


def mail_environment(search: tuple[str, ...]) -> Any:
    """A Jinja environment for e-mail templates: HTML-escaped (`*.html.j2`), not shell-quoted;
    sandboxed and bounded like the others."""
    import jinja2

    return _environment_class()(
        loader=_loader(search),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
    )
