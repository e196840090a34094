"""The condition language of rules and tags: small, safe, bounded.

A condition such as ``product_view_7d >= 10 and cart_items > 0`` or
``event.properties.category in ["sofa", "bed"] and not "vip" in tags`` is
tokenised and parsed here into a tree, checked against the names a rule may
use (see :mod:`engage.rules.vocabulary`), and compiled into nested closures.
Nothing is handed to ``eval``; a name is a key looked up in a context, never
an attribute of a Python object; there are no loops, and the parser refuses
expressions over :data:`MAX_NODES` nodes, so evaluating one costs a bounded
number of steps.

Errors carry the column where they happened, so a rule file's loader can
point at ``file:line`` and the column inside the expression.

Grammar, loosest binding first::

    expr   := and ("or" and)*
    and    := not ("and" not)*
    not    := "not" not | cmp
    cmp    := sum [("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") sum]
    sum    := prod (("+" | "-") prod)*
    prod   := unary (("*" | "/" | "%") unary)*
    unary  := "-" unary | atom
    atom   := NUMBER | STRING | "true" | "false" | "null" | "(" expr ")"
            | "[" [expr ("," expr)*] "]" | NAME ("." NAME)* | NAME "(" [expr ("," expr)*] ")"

>>> cond = compile_expr("cart_items > 0 and cart_value >= 100")
>>> cond.evaluate({"cart_items": 2, "cart_value": 150.0}.get)
True
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

#: The largest tree a condition may have: keeps evaluation cost bounded.
MAX_NODES = 200
#: The longest condition text accepted.
MAX_LENGTH = 2000
#: The deepest nesting (parentheses, lists, calls, repeated ``not`` or ``-``):
#: keeps the parser's and the evaluator's recursion far from Python's limit.
MAX_DEPTH = 32

Lookup = Callable[[str], Any]
"""Resolves a (dotted) name to its value in the current context; None if absent."""


class ExprError(ValueError):
    """A condition that cannot be parsed or names something unknown.

    ``column`` is 1-based within the condition text.
    """

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


class EvalError(Exception):
    """A condition that could not be evaluated for one customer (e.g. ``"a" < 3``)."""


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>|\+|-|\*|/|%|\(|\)|\[|\]|,|\.)
""", re.VERBOSE)

_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}


@dataclass(frozen=True)
class Token:
    """One lexical token and where it starts (0-based offset)."""

    kind: str   # num, str, name, op, kw, end
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens; raises :class:`ExprError` at the first bad character."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos] in "\"'":
                raise ExprError("unterminated string", pos + 1)
            raise ExprError(f"unexpected character {text[pos]!r}", pos + 1)
        kind = m.lastgroup or ""
        if kind != "ws":
            value = m.group()
            if kind == "name" and value in _KEYWORDS:
                kind = "kw"
            tokens.append(Token(kind, value, pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# ---------------------------------------------------------------- the tree
@dataclass(frozen=True)
class Node:
    """A node of the parsed tree: ``op`` names what it does, ``pos`` where it starts."""

    op: str              # lit, name, call, list, not, neg, and, or, and a binary operator
    pos: int
    value: Any = None    # literal value, name, or function name
    args: tuple["Node", ...] = ()


def _unescape(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_LENGTH:
            raise ExprError(f"condition longer than {MAX_LENGTH} characters", MAX_LENGTH)
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.nodes = 0
        self.depth = 0

    def enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"condition nested too deeply (more than {MAX_DEPTH} levels)",
                            tok.pos + 1)

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> Token:
        tok = self.peek()
        if tok.text != text or tok.kind in ("str", "end"):
            found = "the end" if tok.kind == "end" else repr(tok.text)
            raise ExprError(f"expected {text!r}, found {found}", tok.pos + 1)
        return self.take()

    def node(self, op: str, pos: int, value: Any = None, args: tuple[Node, ...] = ()) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ExprError(f"condition too complex (more than {MAX_NODES} parts)", pos + 1)
        return Node(op, pos, value, args)

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ExprError("empty condition", 1)
        tree = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            raise ExprError(f"unexpected {tok.text!r} after a complete condition", tok.pos + 1)
        return tree

    def or_(self) -> Node:
        left = self.and_()
        while self.peek().text == "or" and self.peek().kind == "kw":
            tok = self.take()
            left = self.node("or", tok.pos, args=(left, self.and_()))
        return left

    def and_(self) -> Node:
        left = self.not_()
        while self.peek().text == "and" and self.peek().kind == "kw":
            tok = self.take()
            left = self.node("and", tok.pos, args=(left, self.not_()))
        return left

    def not_(self) -> Node:
        tok = self.peek()
        if tok.kind == "kw" and tok.text == "not":
            self.take()
            self.enter(tok)
            inner = self.not_()
            self.depth -= 1
            return self.node("not", tok.pos, args=(inner,))
        return self.cmp()

    def cmp(self) -> Node:
        left = self.sum()
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            return self.node(tok.text, tok.pos, args=(left, self.sum()))
        if tok.kind == "kw" and tok.text == "in":
            self.take()
            return self.node("in", tok.pos, args=(left, self.sum()))
        if tok.kind == "kw" and tok.text == "not" and self.tokens[self.i + 1].text == "in":
            self.take()
            self.take()
            return self.node("not in", tok.pos, args=(left, self.sum()))
        return left

    def sum(self) -> Node:
        left = self.prod()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            tok = self.take()
            left = self.node(tok.text, tok.pos, args=(left, self.prod()))
        return left

    def prod(self) -> Node:
        left = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/", "%"):
            tok = self.take()
            left = self.node(tok.text, tok.pos, args=(left, self.unary()))
        return left

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text == "-":
            self.take()
            self.enter(tok)
            inner = self.unary()
            self.depth -= 1
            return self.node("neg", tok.pos, args=(inner,))
        return self.atom()

    def atom(self) -> Node:
        tok = self.take()
        if tok.kind == "num":
            value: Any = float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
            return self.node("lit", tok.pos, value)
        if tok.kind == "str":
            return self.node("lit", tok.pos, _unescape(tok.text))
        if tok.kind == "kw" and tok.text in ("true", "false", "null"):
            return self.node("lit", tok.pos, {"true": True, "false": False, "null": None}[tok.text])
        if tok.kind == "op" and tok.text == "(":
            self.enter(tok)
            inner = self.or_()
            self.expect(")")
            self.depth -= 1
            return inner
        if tok.kind == "op" and tok.text == "[":
            self.enter(tok)
            items = self.items("]")
            self.depth -= 1
            return self.node("list", tok.pos, args=tuple(items))
        if tok.kind == "name":
            if self.peek().text == "(" and self.peek().kind == "op":
                self.take()
                self.enter(tok)
                args = tuple(self.items(")"))
                self.depth -= 1
                return self.node("call", tok.pos, tok.text, args)
            parts = [tok.text]
            while self.peek().kind == "op" and self.peek().text == ".":
                self.take()
                part = self.take()
                if part.kind not in ("name", "kw"):
                    raise ExprError("expected a field name after '.'", part.pos + 1)
                parts.append(part.text)
            return self.node("name", tok.pos, ".".join(parts))
        found = "the end of the condition" if tok.kind == "end" else repr(tok.text)
        raise ExprError(f"expected a value, found {found}", tok.pos + 1)

    def items(self, close: str) -> list[Node]:
        items: list[Node] = []
        if self.peek().text == close and self.peek().kind == "op":
            self.take()
            return items
        while True:
            items.append(self.or_())
            tok = self.peek()
            if tok.kind == "op" and tok.text == ",":
                self.take()
                continue
            self.expect(close)
            return items


def parse_expr(text: str) -> Node:
    """The tree of a condition; raises :class:`ExprError` with a column on bad syntax."""
    return _Parser(text).parse()


# ---------------------------------------------------------------- functions
def _number(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise EvalError(f"expected a number, got {x!r}")
    return x


@dataclass(frozen=True)
class Function:
    """A function conditions may call: fixed arity range, bounded cost."""

    name: str
    min_args: int
    max_args: int
    impl: Callable[..., Any]
    #: Takes the lookup as its first argument (reads customer data).
    needs_context: bool = False
    doc: str = ""
    #: For a call whose arguments are all literals: given their values, a
    #: closure of the lookup that answers exactly as ``impl(get, *values)``
    #: would (work done once when compiling), or None where it cannot.
    bind: Callable[..., Callable[[Lookup], Any] | None] | None = None


def _len(x: Any) -> int:
    if isinstance(x, (str, list, tuple, dict, set, frozenset)):
        return len(x)
    raise EvalError(f"len() of {x!r}")


def _lower(x: Any) -> str:
    if not isinstance(x, str):
        raise EvalError(f"lower() of {x!r}")
    return x.lower()


def _min(*xs: Any) -> float:
    return min(_number(x) for x in xs)


def _max(*xs: Any) -> float:
    return max(_number(x) for x in xs)


def _abs(x: Any) -> float:
    return abs(_number(x))


#: Pure functions every condition may use; :mod:`engage.rules.vocabulary`
#: adds the ones that read customer data (``count``, ``consented``).
BUILTINS: dict[str, Function] = {f.name: f for f in (
    Function("len", 1, 1, _len, doc="length of a string or list"),
    Function("lower", 1, 1, _lower, doc="a string in lower case"),
    Function("min", 2, 4, _min, doc="smallest of 2-4 numbers"),
    Function("max", 2, 4, _max, doc="largest of 2-4 numbers"),
    Function("abs", 1, 1, _abs, doc="absolute value"),
)}


# ---------------------------------------------------------------- checking
@dataclass(frozen=True)
class Names:
    """What a condition may refer to: exact names, dotted prefixes, functions."""

    exact: frozenset[str]
    #: Prefixes under which any further dotted path is allowed (e.g. ``event.properties.``).
    open_prefixes: tuple[str, ...] = ()
    functions: tuple[tuple[str, Function], ...] = ()

    def function(self, name: str) -> Function | None:
        """The function called ``name``, if conditions may call it."""
        for fname, f in self.functions:
            if fname == name:
                return f
        return BUILTINS.get(name)

    def allows(self, name: str) -> bool:
        """True when ``name`` is a field conditions may read."""
        return name in self.exact or any(name.startswith(p) for p in self.open_prefixes)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check(tree: Node, names: Names) -> list[ExprError]:
    """Every unknown name, unknown function and wrong arity in ``tree``."""
    errors: list[ExprError] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        stack.extend(node.args)
        if node.op == "name" and not names.allows(node.value):
            errors.append(ExprError(f"unknown field {node.value!r}"
                                    f"{did_you_mean(node.value, names.exact)}", node.pos + 1))
        elif node.op == "call":
            f = names.function(node.value)
            if f is None:
                known = [n for n, _ in names.functions] + list(BUILTINS)
                errors.append(ExprError(f"unknown function {node.value!r}"
                                        f"{did_you_mean(node.value, known)}", node.pos + 1))
            elif not f.min_args <= len(node.args) <= f.max_args:
                want = (str(f.min_args) if f.min_args == f.max_args
                        else f"{f.min_args} to {f.max_args}")
                errors.append(ExprError(f"{node.value}() takes {want} arguments, "
                                        f"got {len(node.args)}", node.pos + 1))
    errors.sort(key=lambda e: e.column)
    return errors


def names_in(tree: Node) -> list[str]:
    """The field names a tree reads, in order of first appearance."""
    seen: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.op == "name" and node.value not in seen:
            seen.append(node.value)
        stack.extend(reversed(node.args))
    return seen


# ---------------------------------------------------------------- compiling
Compiled = Callable[[Lookup], Any]


def _ordered(op: str) -> Callable[[Any, Any], bool]:
    import operator  # noqa: PLC0415 - only needed while compiling

    fn = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]

    def compare(a: Any, b: Any) -> bool:
        # Numbers with numbers, strings with strings; anything else (null
        # included: a customer who never ordered has no last order) is not
        # an answer, and the condition does not hold.
        if isinstance(a, str) and isinstance(b, str):
            return bool(fn(a, b))
        if a is None or b is None:
            raise EvalError(f"{a!r} {op} {b!r}: a value is missing")
        return bool(fn(_number(a), _number(b)))
    return compare


def _arith(op: str) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            if len(a) + len(b) > MAX_LENGTH * 4:
                raise EvalError("string too long")
            return a + b
        x, y = _number(a), _number(b)
        if op == "+":
            return x + y
        if op == "-":
            return x - y
        if op == "*":
            return x * y
        if y == 0:
            raise EvalError(f"{op} by zero")
        return x / y if op == "/" else x % y
    return apply


def _contains(item: Any, container: Any) -> bool:
    if isinstance(container, str):
        if not isinstance(item, str):
            raise EvalError(f"{item!r} in a string")
        return item in container
    if isinstance(container, (list, tuple, set, frozenset, dict)):
        return item in container
    if container is None:
        return False
    raise EvalError(f"'in' needs a list or a string, got {container!r}")


def _compile(node: Node, names: Names) -> Compiled:
    return _build(node, names)[0]


#: Exactly these types take the numeric fast path of an ordered comparison
#: (``bool`` is a subclass of ``int`` but not a number here).
_NUMBERS = (int, float)


def _const(node: Node) -> tuple[bool, Any]:
    """Whether ``node`` is a literal or a list of literals, and its value."""
    if node.op == "lit":
        return True, node.value
    if node.op == "list":
        values = []
        for a in node.args:
            ok, value = _const(a)
            if not ok:
                return False, None
            values.append(value)
        return True, values
    return False, None


def _compare_number(op: str, left: Compiled, name: str | None, value: Any,
                    flipped: bool) -> Compiled:
    """``left OP value`` for a numeric literal ``value`` (``value OP left`` when ``flipped``).

    Tag and rule conditions are mostly a field against a number: an int or a
    float on the field's side is compared at once; anything else (strings,
    null, booleans) goes through the checked :func:`_ordered` comparison with
    the operands in their written order, so answers and errors are those of
    the general path. ``name``: the field ``left`` reads, looked up directly.
    """
    cmp = _ordered(op)
    if flipped:
        op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
        slow: Callable[[Any], bool] = lambda a: cmp(value, a)
    else:
        slow = lambda a: cmp(a, value)
    read: Compiled = left if name is None else (lambda get: get(name))
    num = _NUMBERS
    # One closure per operator: the comparison inline, no call per evaluation.
    if op == "<":
        def lt(get: Lookup) -> bool:
            a = get(name) if name is not None else read(get)
            return a < value if a.__class__ in num else slow(a)
        return lt
    if op == "<=":
        def le(get: Lookup) -> bool:
            a = get(name) if name is not None else read(get)
            return a <= value if a.__class__ in num else slow(a)
        return le
    if op == ">":
        def gt(get: Lookup) -> bool:
            a = get(name) if name is not None else read(get)
            return a > value if a.__class__ in num else slow(a)
        return gt

    def ge(get: Lookup) -> bool:
        a = get(name) if name is not None else read(get)
        return a >= value if a.__class__ in num else slow(a)
    return ge


def _build(node: Node, names: Names) -> tuple[Compiled, bool]:
    """The closure for ``node``, and whether it always answers a ``bool``.

    Where both operands of ``and``/``or`` (or the operand of ``not``)
    already answer a bool, :func:`_truth` would change nothing and is left
    out. Lookups answer plain values (numbers, strings, lists, dicts, null):
    ``==`` and ``!=`` against a literal then always answer a bool too.
    """
    op = node.op
    if op == "lit":
        value = node.value
        return (lambda get: value), isinstance(value, bool)
    if op == "name":
        name = node.value
        return (lambda get: get(name)), False
    if op == "list":
        parts = [_compile(a, names) for a in node.args]
        return (lambda get: [p(get) for p in parts]), False
    if op == "call":
        f = names.function(node.value)
        assert f is not None  # check() ran first
        impl = f.impl
        consts = [_const(a) for a in node.args]
        if all(ok for ok, _ in consts):
            values = tuple(v for _, v in consts)
            if f.needs_context:
                bound = f.bind(*values) if f.bind is not None else None
                if bound is not None:
                    return bound, False
                return (lambda get: impl(get, *values)), False
        args = [_compile(a, names) for a in node.args]
        if f.needs_context:
            return (lambda get: impl(get, *[a(get) for a in args])), False
        return (lambda get: impl(*[a(get) for a in args])), False
    if op == "not":
        inner, is_bool = _build(node.args[0], names)
        if is_bool:
            return (lambda get: not inner(get)), True
        return (lambda get: not _truth(inner(get))), True
    if op == "neg":
        inner = _compile(node.args[0], names)
        return (lambda get: -_number(inner(get))), False
    (left, lbool), (right, rbool) = _build(node.args[0], names), _build(node.args[1], names)
    if op in ("and", "or"):
        if not lbool:
            left_in = left
            left = lambda get: _truth(left_in(get))   # noqa: E731 - a closure is the point
        if not rbool:
            right_in = right
            right = lambda get: _truth(right_in(get))   # noqa: E731
        if op == "and":
            return (lambda get: left(get) and right(get)), True
        return (lambda get: left(get) or right(get)), True
    lconst, lvalue = _const(node.args[0])
    rconst, rvalue = _const(node.args[1])
    if op in ("==", "!="):
        # A literal on either side: a lookup's plain value compares to a bool.
        against_literal = lconst or rconst
        if rconst and node.args[0].op == "name":
            name, value = node.args[0].value, rvalue
            if op == "==":
                return (lambda get: get(name) == value), against_literal
            return (lambda get: get(name) != value), against_literal
        if op == "==":
            return (lambda get: left(get) == right(get)), against_literal
        return (lambda get: left(get) != right(get)), against_literal
    if op in ("in", "not in"):
        if rconst:
            container = rvalue   # a literal list: built once, never handed out
            if op == "in":
                return (lambda get: _contains(left(get), container)), True
            return (lambda get: not _contains(left(get), container)), True
        if op == "in":
            return (lambda get: _contains(left(get), right(get))), True
        return (lambda get: not _contains(left(get), right(get))), True
    if op in ("<", "<=", ">", ">="):
        if rconst and isinstance(rvalue, _NUMBERS) and not isinstance(rvalue, bool):
            name = node.args[0].value if node.args[0].op == "name" else None
            return _compare_number(op, left, name, rvalue, False), True
        if lconst and isinstance(lvalue, _NUMBERS) and not isinstance(lvalue, bool):
            name = node.args[1].value if node.args[1].op == "name" else None
            return _compare_number(op, right, name, lvalue, True), True
        cmp = _ordered(op)
        return (lambda get: cmp(left(get), right(get))), True
    arith = _arith(op)
    return (lambda get: arith(left(get), right(get))), False


def _truth(x: Any) -> bool:
    if isinstance(x, bool):
        return x
    if x is None:
        return False
    if isinstance(x, (int, float)):
        return x != 0
    if isinstance(x, (str, list, tuple, set, frozenset, dict)):
        return len(x) > 0
    raise EvalError(f"{x!r} is neither true nor false")


#: Names every condition may use when none are given (tests, examples).
ANY_NAME = Names(frozenset(), open_prefixes=("",))


@dataclass(frozen=True)
class Condition:
    """A parsed, checked and compiled condition.

    >>> Condition.of('"vip" in tags or orders >= 3').evaluate({"tags": ["vip"], "orders": 0}.get)
    True
    """

    text: str
    tree: Node
    fn: Compiled
    #: ``fn`` made to answer a bool (``fn`` itself where it always does):
    #: what :meth:`evaluate` calls, and what hot callers may call directly.
    test: Callable[[Lookup], bool] = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.test is None:
            fn = self.fn
            object.__setattr__(self, "test", lambda get: _truth(fn(get)))

    @staticmethod
    def of(text: str, names: Names = ANY_NAME) -> "Condition":
        """Parse, check against ``names`` and compile; raises the first :class:`ExprError`."""
        tree = parse_expr(text)
        errors = check(tree, names)
        if errors:
            raise errors[0]
        fn, is_bool = _build(tree, names)
        test: Callable[[Lookup], bool] = fn if is_bool else (lambda get: _truth(fn(get)))
        return Condition(text, tree, fn, test)

    def evaluate(self, get: Lookup) -> bool:
        """Whether the condition holds; :class:`EvalError` when it cannot be decided."""
        return self.test(get)

    def names(self) -> list[str]:
        """The fields this condition reads (for explanations)."""
        return names_in(self.tree)


def compile_expr(text: str, names: Names = ANY_NAME) -> Condition:
    """Shorthand for :meth:`Condition.of`."""
    return Condition.of(text, names)
