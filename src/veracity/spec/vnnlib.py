"""VNN-LIB reader: the subset of SMT-LIB used by VNN-COMP, turned into a :class:`Spec`.

A file declares inputs ``X_0..X_{n-1}`` and outputs ``Y_0..Y_{m-1}`` and asserts constraints built from
``<= >= < >`` (strict read as non-strict), ``and``, ``or`` and linear arithmetic ``+ - *``. The conjunction
of all asserts is put in disjunctive normal form; in each term the input atoms must be single-variable
bounds forming a box, and the output atoms give the rows of one bad region ``A y <= b``. Terms with the same
box become one :class:`Case`.

Parsing is built for large files (millions of atoms): one regex pass tokenizes, reading each simple
comparison such as ``(<= X_3 0.5)`` as a single token, and token positions are only recovered when an error
is reported.
"""

from __future__ import annotations

import gzip
import itertools
import math
import operator
import re
from pathlib import Path

import numpy as np

from veracity.spec.core import Box, Case, Region, Spec

__all__ = ["MAX_TERMS", "VnnlibError", "load_vnnlib", "parse_vnnlib"]

MAX_TERMS = 100_000
"""Largest number of DNF terms a file may expand to."""

# A comment, a whole simple comparison "(op word word)", a parenthesis, or a word. Whitespace is skipped.
_TOKEN = re.compile(r";[^\n]*|\([<>]=?\s+[^\s();]+\s+[^\s();]+\s*\)|[()]|[^\s();]+")
_WORD = re.compile(r"[^\s()]+")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(0|[1-9]\d*)")
_COMPARISONS = {"<=", ">=", "<", ">"}
_ARITHMETIC = {"+", "-", "*"}

# Atoms: (_LOWER, i, v) is X_i >= v, (_UPPER, i, v) is X_i <= v, (_ROW, a, b) is a . y <= b.
_LOWER, _UPPER, _ROW = 0, 1, 2


class VnnlibError(ValueError):
    """A malformed or unsupported VNN-LIB file; the message starts with ``file:line:col:``."""

    def __init__(self, filename: str, line: int, col: int, message: str):
        super().__init__(f"{filename}:{line}:{col}: {message}")
        self.filename, self.line, self.col, self.message = filename, line, col, message

    def __reduce__(self):
        return type(self), (self.filename, self.line, self.col, self.message)


def load_vnnlib(path, n_inputs: int | None = None, n_outputs: int | None = None) -> Spec:
    """Read a VNN-LIB file, plain or gzipped; ``path`` may omit a ``.gz`` that the file on disk has."""
    path = Path(path)
    gz = Path(f"{path}.gz")
    if not path.exists() and gz.exists():
        path = gz
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return parse_vnnlib(data.decode("utf-8", errors="replace"), str(path), n_inputs, n_outputs)


def parse_vnnlib(
    text: str, filename: str = "<string>", n_inputs: int | None = None, n_outputs: int | None = None
) -> Spec:
    """Parse VNN-LIB text; ``n_inputs``/``n_outputs``, when given, must match the declarations."""
    return _Parser(text, filename).spec(n_inputs, n_outputs)


class _Parser:
    """Tree nodes are lists ``[index of "(", child, ...]``; leaves are token indices (ints)."""

    def __init__(self, text: str, filename: str):
        self.text, self.filename = text, filename
        self.tokens = _TOKEN.findall(text)
        self.declared: dict[str, tuple[str, int]] = {}  # "X_3" -> ("X", 3)
        self.n_out = 0
        self.cache: dict[str, list[list[tuple]]] = {}  # simple comparison token -> its DNF

    # -- errors ------------------------------------------------------------------------------------------

    def error(self, loc, message: str) -> VnnlibError:
        """An error at ``loc``: a token index, (token index, word within it), or None for the file start."""
        offset = 0
        if loc is not None:
            index, word = loc if isinstance(loc, tuple) else (loc, None)
            match = next(itertools.islice(_TOKEN.finditer(self.text), index, None))
            offset = match.start()
            if word is not None:
                offset += [w.start() for w in _WORD.finditer(match.group())][word]
        line = self.text.count("\n", 0, offset) + 1
        col = offset - self.text.rfind("\n", 0, offset)
        return VnnlibError(self.filename, line, col, message)

    # -- s-expressions -----------------------------------------------------------------------------------

    def tree(self) -> list:
        top: list = []
        current, stack = top, []
        for i, tok in enumerate(self.tokens):
            if tok == "(":
                node = [i]
                current.append(node)
                stack.append(current)
                current = node
            elif tok == ")":
                if not stack:
                    raise self.error(i, "unexpected ')'")
                current = stack.pop()
            elif tok[0] != ";":
                current.append(i)
        if stack:
            raise self.error(top[-1][0], "'(' is never closed")
        return top

    def head(self, node: list) -> str:
        """The operator word of a list node."""
        if len(node) < 2:
            raise self.error(node[0], "empty expression '()'")
        if isinstance(node[1], list) or self.tokens[node[1]][0] == "(":
            raise self.error(node[1], "expected an operator")
        return self.tokens[node[1]]

    # -- top level ---------------------------------------------------------------------------------------

    def spec(self, n_inputs: int | None, n_outputs: int | None) -> Spec:
        asserts = []
        decl_loc: dict[tuple[str, int], int] = {}  # variable -> token index of its name in declare-const
        for node in self.tree():
            op = self.head(node) if isinstance(node, list) else None
            if op == "declare-const":
                decl_loc[self.declare(node)] = node[2]
            elif op == "assert":
                if len(node) != 3:
                    raise self.error(node[0], f"assert takes one expression, got {len(node) - 2}")
                asserts.append(node)
            else:
                raise self.error(_loc(node), "expected (declare-const ...) or (assert ...)")
        sizes = {}
        for kind, name, given in (("X", "inputs", n_inputs), ("Y", "outputs", n_outputs)):
            indices = sorted(i for k, i in decl_loc if k == kind)
            for expected, i in enumerate(indices):
                if i != expected:
                    raise self.error(decl_loc[kind, i], f"{kind}_{i} declared but {kind}_{expected} is not")
            if given is not None and given != len(indices):
                first = decl_loc[kind, 0] if indices else None
                raise self.error(first, f"file declares {len(indices)} {name} but {given} were expected")
            sizes[kind] = len(indices)
        if not asserts:
            raise self.error(None, "no assertions")
        self.n_out = sizes["Y"]
        cases = self.cases([a[2] for a in asserts], sizes["X"], decl_loc, asserts[0][0])
        return Spec(cases, sizes["X"], sizes["Y"])

    def declare(self, node: list) -> tuple[str, int]:
        if len(node) != 4 or isinstance(node[2], list) or isinstance(node[3], list):
            raise self.error(node[0], "expected (declare-const <name> Real)")
        name, sort = self.tokens[node[2]], self.tokens[node[3]]
        m = _VARIABLE.fullmatch(name)
        if not m:
            raise self.error(node[2], f"variables must be named X_<i> or Y_<j>, got '{name}'")
        if sort != "Real":
            raise self.error(node[3], f"unsupported type '{sort}' (only Real)")
        if name in self.declared:
            raise self.error(node[2], f"{name} declared twice")
        key = self.declared[name] = (m[1], int(m[2]))
        return key

    def cases(self, exprs: list, n_in: int, decl_loc: dict, loc) -> list[Case]:
        """Expand the conjunction of ``exprs`` and group its terms by input box."""
        common, terms = self.conjunction(self.dnfs(exprs), loc)
        lower0, upper0, rows0 = [-math.inf] * n_in, [math.inf] * n_in, []
        _fold(common, lower0, upper0, rows0)
        by_box: dict[tuple, list] = {}
        for t, term in enumerate(terms):
            lower, upper, rows = lower0[:], upper0[:], rows0[:]
            _fold(term, lower, upper, rows)
            if any(map(operator.gt, lower, upper)):
                continue
            key = (tuple(lower), tuple(upper))
            if key not in by_box:
                for i, (lo, up) in enumerate(zip(lower, upper, strict=True)):
                    if math.isinf(lo) or math.isinf(up):
                        where = f" in disjunct {t + 1} of {len(terms)}" if len(terms) > 1 else ""
                        side = "lower" if math.isinf(lo) else "upper"
                        raise self.error(decl_loc["X", i], f"X_{i} has no {side} bound{where}")
                by_box[key] = []
            by_box[key].append(rows)
        return [
            Case(Box(lower, upper), [self.region(rows) for rows in regions])
            for (lower, upper), regions in by_box.items()
        ]

    def region(self, rows: list) -> Region:
        A = np.array([a for a, _ in rows], dtype=np.float64).reshape(len(rows), self.n_out)
        return Region(A, [b for _, b in rows])

    # -- constraints, as DNF: a list of terms, each a list of atoms -----------------------------------------

    def dnf(self, node) -> list[list[tuple]]:
        if not isinstance(node, list):
            tok = self.tokens[node]
            if tok[0] != "(":
                raise self.error(node, f"expected a constraint, got '{tok}'")
            if tok not in self.cache:
                op, a, b = tok[1:-1].split()
                lhs, rhs = self.word(a, (node, 1)), self.word(b, (node, 2))
                self.cache[tok] = self.comparison(op, lhs, rhs, node)
            return self.cache[tok]
        op, args = self.head(node), node[2:]
        if op == "and":
            common, terms = self.conjunction(self.dnfs(args), node[0])
            return [common + t for t in terms]
        if op == "or":
            terms = [t for d in self.dnfs(args) for t in d]
            if len(terms) > MAX_TERMS:
                raise self.error(node[0], f"disjunctive normal form exceeds {MAX_TERMS} terms")
            return terms
        if op in _COMPARISONS:
            if len(args) != 2:
                raise self.error(node[0], f"'{op}' takes 2 arguments, got {len(args)}")
            return self.comparison(op, self.linear(args[0]), self.linear(args[1]), node[0])
        if op in _ARITHMETIC:
            raise self.error(node[1], f"expected a constraint, got a '{op}' term")
        raise self.error(node[1], f"unknown operator '{op}'")

    def dnfs(self, nodes: list) -> list[list[list[tuple]]]:
        """The DNF of each node; inlines the cache lookup for simple comparisons, which dominate big files."""
        cache, tokens = self.cache, self.tokens
        out = []
        for node in nodes:
            d = None if isinstance(node, list) else cache.get(tokens[node])
            out.append(self.dnf(node) if d is None else d)
        return out

    def conjunction(self, dnfs: list, loc) -> tuple[list[tuple], list[list[tuple]]]:
        """The DNF of a conjunction as (atoms common to all terms, the terms' other atoms)."""
        common: list[tuple] = []
        terms: list[list[tuple]] = [[]]
        for d in dnfs:
            if len(d) == 1:
                common += d[0]
            elif len(terms) * len(d) > MAX_TERMS:
                raise self.error(loc, f"disjunctive normal form exceeds {MAX_TERMS} terms")
            else:
                terms = [t + u for t in terms for u in d]
        return common, terms

    def comparison(self, op: str, a: tuple, b: tuple, loc) -> list[list[tuple]]:
        """The DNF of ``a op b`` for linear terms a, b: [] if false, [[]] if true, else [[atom]]."""
        (lhs, lc), (rhs, rc) = (a, b) if op[0] == "<" else (b, a)
        coeffs = dict(lhs)  # lhs - rhs <= 0
        for v, c in rhs.items():
            coeffs[v] = coeffs.get(v, 0.0) - c
        coeffs = {v: c for v, c in coeffs.items() if c != 0}
        const = lc - rc
        if not coeffs:
            return [[]] if const <= 0 else []
        kinds = {k for k, _ in coeffs}
        names = ", ".join(f"{k}_{i}" for k, i in coeffs)
        if kinds == {"X"}:
            if len(coeffs) > 1:
                raise self.error(loc, f"constraint over {names}: inputs only take single-variable bounds")
            (((_, i), c),) = coeffs.items()
            return [[(_UPPER if c > 0 else _LOWER, i, -const / c + 0.0)]]
        if kinds == {"Y"}:
            row = [0.0] * self.n_out
            for (_, j), c in coeffs.items():
                row[j] = c
            return [[(_ROW, tuple(row), -const + 0.0)]]
        raise self.error(loc, f"constraint over {names} mixes inputs and outputs, which is not supported")

    # -- linear terms: ({("X", i): coefficient}, constant) ----------------------------------------------

    def linear(self, node) -> tuple[dict, float]:
        if not isinstance(node, list):
            tok = self.tokens[node]
            if tok[0] == "(":
                raise self.error(node, "expected a term, got a constraint")
            return self.word(tok, node)
        op, args = self.head(node), node[2:]
        if op not in _ARITHMETIC:
            known = op in _COMPARISONS or op in ("and", "or")
            raise self.error(node[1], f"expected a term, got '{op}'" if known else f"unknown operator '{op}'")
        if not args:
            raise self.error(node[0], f"'{op}' needs an argument")
        terms = [self.linear(a) for a in args]
        if op == "*":
            coeffs, const = terms[0]
            for arg, (c, k) in zip(args[1:], terms[1:], strict=True):
                if coeffs and c:
                    raise self.error(_loc(arg), "non-linear term: product of two variables")
                coeffs = _scale(c, const) if c else _scale(coeffs, k)
                const *= k
            return coeffs, const
        if op == "-":
            if len(terms) == 1:
                return _scale(terms[0][0], -1.0), -terms[0][1]
            terms = [terms[0]] + [(_scale(c, -1.0), -k) for c, k in terms[1:]]
        coeffs, const = {}, 0.0
        for c, k in terms:
            for v, x in c.items():
                coeffs[v] = coeffs.get(v, 0.0) + x
            const += k
        return coeffs, const

    def word(self, tok: str, loc) -> tuple[dict, float]:
        """A variable or a number."""
        key = self.declared.get(tok)
        if key is not None:
            return {key: 1.0}, 0.0
        if _NUMBER.fullmatch(tok):
            value = float(tok)
            if math.isfinite(value):
                return {}, value
        if _VARIABLE.fullmatch(tok):
            raise self.error(loc, f"undeclared variable '{tok}'")
        if tok[0] in "+-.0123456789":
            raise self.error(loc, f"bad number '{tok}'")
        raise self.error(loc, f"unknown symbol '{tok}'")


def _loc(node) -> int:
    return node[0] if isinstance(node, list) else node


def _scale(coeffs: dict, factor: float) -> dict:
    return {v: c * factor for v, c in coeffs.items()}


def _fold(atoms: list[tuple], lower: list, upper: list, rows: list) -> None:
    """Tighten ``lower``/``upper`` by the input bounds in ``atoms``; append their output rows to ``rows``."""
    for kind, i, v in atoms:
        if kind == _ROW:
            rows.append((i, v))
        elif kind == _LOWER:
            if v > lower[i]:
                lower[i] = v
        elif v < upper[i]:
            upper[i] = v
