"""The Jinja2 sandbox templates run in, with its compile and render work bounded.

Why bounds: one template line must never stall the worker or the API. Jinja2 folds
constant expressions while compiling, so `{{ (9**10000000) % 7 }}` used to be computed
by the compiler in one C-level big-int operation. Such an operation holds the GIL from
start to end: no thread, timeout or signal handler can interrupt it, and every thread
of the process (the HTTP API included) stops until it returns, minutes later.

So the real guard is refusing, before it runs, every single operation that could build a
huge value in one C call; a deadline only helps between operations:

1. Nothing is computed at compile time: the optimizer is off, `finalize` takes the
   context (the compiler then cannot pre-render output), and the operators below are
   intercepted (Jinja2 never folds an intercepted operator). A huge constant power or
   repetition is also refused while parsing, so `campaign validate` names its line even
   in a branch no sample lead takes.
2. Before it runs, an operation that would make a number over MAX_INT_BITS bits or a
   text or list over MAX_SIZE items is refused: `**`, `*` and `+` of numbers and
   sequences, `%` and `str.format` widths, the amplifying filters and string methods
   (center, indent, replace, join, wordwrap, batch, slice, tojson, ljust, ...), `range` (the sandbox's own
   limit), values stored in a `namespace` or passed to a macro. `lipsum` is removed
   and `str.translate` refused: an email needs neither, and neither can be bounded.
3. What repeats is counted per render (a template with its includes): loop turns,
   calls, output characters, and a deadline of RENDER_SECONDS checked at each loop
   turn, call, attribute or item lookup, intercepted operator and output.

Every refusal is a `LimitError` (a Jinja2 `SecurityError`), raised at the template
line that asked for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace, _PassArg

MAX_INT_BITS = 4096  # about 1233 digits: far beyond any price, count or date in an email
MAX_SIZE = 1_000_000  # characters of one text, items of one list
MAX_TURNS = 100_000  # loop turns per render
MAX_CALLS = 100_000  # calls (macros, methods, filters) per render
MAX_OUTPUT = 2_000_000  # characters per render
RENDER_SECONDS = 5.0  # a real email renders in milliseconds

_LOOP_FILTER = "nurture_counted_loop"  # wraps the iterable of every for loop (see _count_loops)


class LimitError(SecurityError):
    """A template asked for more work than any email needs."""


# ---------------------------------------------------------------- the per-render budget


@dataclass
class _Budget:
    deadline: float
    turns: int = 0
    calls: int = 0
    output: int = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitError(f"the template took longer than {RENDER_SECONDS:g} s to render")

    def turn(self, literal_chars: int) -> None:
        self.turns += 1
        if self.turns > MAX_TURNS:
            raise LimitError(f"loops turned more than {MAX_TURNS} times in one email")
        self.emit(literal_chars)

    def call(self) -> None:
        self.calls += 1
        if self.calls > MAX_CALLS:
            raise LimitError(f"more than {MAX_CALLS} calls in one email")
        self.tick()

    def emit(self, chars: int) -> None:
        self.output += chars
        if self.output > MAX_OUTPUT:
            raise LimitError(f"the email would be longer than {MAX_OUTPUT} characters")
        self.tick()


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("nurture_template_budget", default=None)


@contextlib.contextmanager
def _render_budget() -> Iterator[None]:
    """One budget per top-level render; an include or a nested render shares it."""
    if _BUDGET.get() is not None:
        yield
        return
    token = _BUDGET.set(_Budget(time.monotonic() + RENDER_SECONDS))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


class _BoundedTemplate(jinja2.Template):
    def render(self, *args: Any, **kwargs: Any) -> str:
        with _render_budget():
            return super().render(*args, **kwargs)


# ---------------------------------------------------------------- size checks, before the work


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else None


def _units(value: Any, count: int) -> str:
    unit = "character" if isinstance(value, str) else "item"
    return f"{count} {unit}{'' if count == 1 else 's'}"


def _check_size(value: Any, what: str) -> None:
    size = _size(value)
    if size is not None and size > MAX_SIZE:
        raise LimitError(f"{what} would hold {_units(value, size)} (at most {MAX_SIZE} in a template)")


def _check_estimate(estimate: float, what: str, unit: str = "characters") -> None:
    if estimate > MAX_SIZE:
        raise LimitError(f"{what} would make about {int(estimate)} {unit} (at most {MAX_SIZE} in a template)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_power(base: Any, exponent: Any) -> None:
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:
        bits = exponent * math.log2(abs(base))
        if bits > MAX_INT_BITS:
            digits = int(bits * math.log10(2)) + 1
            raise LimitError(f"{_short(base)} ** {_short(exponent)} would have about {digits} digits "
                             f"(numbers in a template have at most {int(MAX_INT_BITS * math.log10(2))})")


def _check_product(left: Any, right: Any) -> None:
    if _is_int(left) and _is_int(right):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise LimitError(f"{_short(left)} * {_short(right)} is too large a number for a template")
        return
    for sequence, count in ((left, right), (right, left)):
        if _size(sequence) is not None and _is_int(count) and len(sequence) * count > MAX_SIZE:
            raise LimitError(f"repeating {_units(sequence, len(sequence))} {_short(count)} times would make "
                             f"{_units(sequence, len(sequence) * count)} (at most {MAX_SIZE} in a template)")


def _check_sum(left: Any, right: Any) -> None:
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        _check_estimate(len(left) + len(right), "joining these two")


# `%` conversion specs and str.format specs: the widths and precisions they ask for.
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(template: str, values: Any) -> None:
    """`'%999999999d' % 1` would allocate a gigabyte in one call."""
    for width, precision in _PRINTF_SPEC.findall(template):
        if "*" in (width, precision):
            raise LimitError("a '*' width in a % format is not allowed in templates: write the width")
        _check_width(width, "a width in this % format")
        _check_width(precision, "a precision in this % format")


def _check_format_spec(template: str, args: Iterable[Any]) -> None:
    try:
        specs = [spec for _, _, spec, _ in string.Formatter().parse(template) if spec]
    except ValueError:
        return  # malformed: str.format itself says why
    for spec in specs:
        if "{" in spec:  # a width taken from an argument
            for value in args:
                if _is_int(value) and value > MAX_SIZE:
                    raise LimitError(f"a width of {_short(value)} in a format is too large (at most {MAX_SIZE})")
        for digits in re.findall(r"\d+", spec):
            _check_width(digits, "a width in this format")


def _check_width(digits: str, what: str) -> None:
    if digits and (len(digits) > 7 or int(digits) > MAX_SIZE):
        raise LimitError(f"{what} is too large: {digits[:12]} (at most {MAX_SIZE})")


def _short(number: Any) -> str:
    text = str(number) if not _is_int(number) or number.bit_length() < 64 else f"a {number.bit_length()}-bit number"
    return text if len(text) <= 24 else text[:21] + "..."


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**":
        _check_power(left, right)
    elif operator == "*":
        _check_product(left, right)
    elif operator == "+":
        _check_sum(left, right)
    elif operator == "%" and isinstance(left, str):
        _check_printf(left, right)


# What amplifying filters and methods would make, estimated from their arguments
# (named as Jinja2 and Python name them, so keyword arguments match).


def _width_estimate(value: Any, width: Any = 0, *_: Any, **__: Any) -> float:
    return width if _is_int(width) else 0


def _indent_estimate(value: Any, width: Any = 4, first: bool = False, blank: bool = False) -> float:
    text = str(value)
    step = len(width) if isinstance(width, str) else width if _is_int(width) else 0
    return len(text) + step * (text.count("\n") + 1)


def _replace_estimate(value: Any, old: Any, new: Any, count: Any = None) -> float:
    text, old, new = str(value), str(old), str(new)
    found = text.count(old) if old else len(text) + 1
    if _is_int(count) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(0, len(new) - len(old))


def _join_estimate(value: Any, d: Any = "", attribute: Any = None) -> float:
    return len(value) * (len(str(d)) + 1) if _size(value) is not None else 0


def _wordwrap_estimate(s: Any, width: Any = 79, break_long_words: bool = True, wrapstring: Any = None,
                       break_on_hyphens: bool = True) -> float:
    text = str(s)
    lines = len(text) // max(width if _is_int(width) else 1, 1) + text.count("\n") + 1
    return len(text) + lines * len(str(wrapstring or "\n"))


def _batch_estimate(value: Any, linecount: Any = 0, fill_with: Any = None) -> float:
    return linecount if fill_with is not None and _is_int(linecount) else 0  # the last batch is padded


def _slice_estimate(value: Any, slices: Any = 0, fill_with: Any = None) -> float:
    return slices if _is_int(slices) else 0


def _tojson_estimate(value: Any, indent: Any = None) -> float:
    text = str(value)
    return len(text) * (1 + indent) if _is_int(indent) else 0  # each value on its own indented line


def _tabs_estimate(value: Any, tabsize: Any = 8) -> float:
    return len(str(value)) + str(value).count("\t") * (tabsize if _is_int(tabsize) else 0)


_FILTER_ESTIMATES: dict[str, Callable[..., float]] = {
    "center": _width_estimate,
    "indent": _indent_estimate,
    "replace": _replace_estimate,
    "join": _join_estimate,
    "wordwrap": _wordwrap_estimate,
    "batch": _batch_estimate,
    "slice": _slice_estimate,
    "tojson": _tojson_estimate,
}
_METHOD_ESTIMATES: dict[str, Callable[..., float]] = {
    "center": _width_estimate,
    "ljust": _width_estimate,
    "rjust": _width_estimate,
    "zfill": _width_estimate,
    "expandtabs": _tabs_estimate,
    "replace": _replace_estimate,
}
_REFUSED_STR_METHODS = ("translate", "maketrans")


def _estimate(estimator: Callable[..., float], what: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        estimate = estimator(*args, **kwargs)
    except (TypeError, ValueError):
        return  # wrong arguments: the call itself says so
    _check_estimate(estimate, what, "items" if estimator in (_batch_estimate, _slice_estimate) else "characters")


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        _check_size(value, "an argument")
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if isinstance(owner, str):
        if name == "join" and args and _size(args[0]) is not None:
            _check_estimate(len(args[0]) * (len(owner) + 1), "join")
        elif name in _METHOD_ESTIMATES:
            _estimate(_METHOD_ESTIMATES[name], name, (owner, *args), kwargs)


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` with its arguments checked first and its result after."""
    passes_arg = _PassArg.from_obj(func) is not None
    estimator = _FILTER_ESTIMATES.get(name)

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.call()
        values = args[1:] if passes_arg else args
        for value in (*values[1:], *kwargs.values()):
            _check_size(value, f"an argument of |{name}")
        if name == "format" and values:
            _check_printf(str(values[0]), values[1:])
        if estimator is not None:
            _estimate(estimator, f"|{name}", values, kwargs)
        result = func(*args, **kwargs)
        _check_size(result, f"the result of |{name}")
        return result

    return bounded


def _counted_loop(iterable: Any, literal_chars: int) -> Iterator[Any]:
    """A for loop's iterable, counting each turn (and the text its body writes)."""
    budget = _BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget.turn(literal_chars)
        yield item


class _BoundedNamespace(Namespace):
    """`namespace()`: the one value a loop can grow turn after turn."""

    def __setitem__(self, name: str, value: Any) -> None:
        _check_size(value, f"namespace value '{name}'")
        super().__setitem__(name, value)


# ---------------------------------------------------------------- the environment


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with compile and render work bounded (module doc)."""

    intercepted_binops = frozenset({"**", "*", "+", "%"})
    template_class = _BoundedTemplate

    def __init__(self, *args: Any, finalize: Callable[[Any], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, finalize=_counting_finalize(finalize), optimized=False, **kwargs)
        self.globals.pop("lipsum", None)
        self.globals["namespace"] = _BoundedNamespace
        self.filters = {name: _bounded_filter(name, func) for name, func in self.filters.items()}
        self.filters[_LOOP_FILTER] = _counted_loop

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        _refuse_constant_bombs(tree, name, filename)
        _count_loops(tree, self)
        return tree

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.call()
        _check_call(obj, args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        _check_size(result, f"the result of {getattr(obj, '__name__', 'this call')}")
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in _REFUSED_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        @functools.wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if value.__name__ == "format_map" and args and isinstance(args[0], dict) else {}
            _check_format_spec(template, (*args, *kwargs.values(), *mapping.values()))
            return wrapped(*args, **kwargs)

        return checked


def _counting_finalize(inner: Callable[[Any], Any] | None) -> Callable[..., Any]:
    """The environment's finalize, counting output. Taking the context is what keeps the
    compiler from rendering constant output at compile time."""

    @jinja2.pass_context
    def finalize(context: jinja2.runtime.Context, value: Any) -> Any:
        if inner is not None:
            value = inner(value)
        budget = _BUDGET.get()
        if budget is not None:
            budget.emit(len(value) if isinstance(value, str) else len(str(value)))
        return value

    return finalize


# ---------------------------------------------------------------- checks on the parsed template


def _refuse_constant_bombs(tree: nodes.Template, name: str | None, filename: str | None) -> None:
    """`9**10000000` or `'x' * 10**12` written out: refused at its line while parsing,
    whether or not a render ever reaches it."""
    for node in tree.find_all(nodes.BinExpr):
        if isinstance(node.left, nodes.Const) and isinstance(node.right, nodes.Const):
            try:
                _check_binop(node.operator, node.left.value, node.right.value)
            except LimitError as error:
                raise jinja2.TemplateSyntaxError(str(error), node.lineno, name, filename) from None


def _count_loops(tree: nodes.Template, environment: jinja2.Environment) -> None:
    """Route every for loop's iterable through the counting filter, charging each turn
    with the text its body writes (nested loops charge their own)."""
    for loop in list(tree.find_all(nodes.For)):
        literal = sum(len(data.data) for data in _own_template_data(loop.body))
        counted = nodes.Filter(loop.iter, _LOOP_FILTER, [nodes.Const(literal)], [], None, None,
                               lineno=loop.iter.lineno)
        loop.iter = counted.set_environment(environment)


def _own_template_data(body: list[nodes.Node]) -> Iterator[nodes.TemplateData]:
    for node in body:
        if isinstance(node, nodes.TemplateData):
            yield node
        elif not isinstance(node, (nodes.For, nodes.Macro, nodes.CallBlock)):
            yield from _own_template_data(list(node.iter_child_nodes()))
