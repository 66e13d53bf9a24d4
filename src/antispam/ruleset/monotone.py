"""Which way a meta rule's truth can move when one of the counts it reads goes up or down.

A scan starts from the template (every count as for a message where nothing hits) and
re-evaluates the metas that read a count that changed.  Most of those re-evaluations give
the template's value again: ``A && !B`` is false in the template and stays false when only
``B`` hits.  When a meta's truth never rises as a count rises (or never falls), a change of
that count in that direction cannot move the meta off its template value, so the scan need
not evaluate it for that change (``RulesCheck``).

The polarity is read off the meta's Python expression (``compiler._meta_function``'s source,
over ``h[i]``), knowing that every count is a non-negative integer:

* ``+1``: the truth of the meta never falls when ``h[i]`` rises;
* ``-1``: it never rises when ``h[i]`` rises;
* ``0``: unknown (both ways, or a construct not analysed: ``or``/``and`` used as numbers,
  ``==``, division, chained comparisons...), so every change of ``h[i]`` re-evaluates it.

A meta that is monotone in each count taken alone stays on its template value when every
count that changed moved the way that cannot move it: change the counts one at a time and
no step can.
"""

from __future__ import annotations

import ast

Polarity = dict[int, int]


def meta_polarity(src: str) -> Polarity:
    """``rule id -> +1 / -1 / 0`` for every ``h[i]`` that ``src`` (a Python expression) reads."""
    tree = ast.parse(src, mode="eval").body
    known = _truth(tree)
    return {i: known.get(i, 0) for i in _indexes(tree)}


def _indexes(node: ast.AST) -> set[int]:
    out = set()
    for n in ast.walk(node):
        i = _index(n)
        if i is not None:
            out.add(i)
    return out


def _index(node: ast.AST) -> int | None:
    """``i`` for a node ``h[i]``."""
    if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "h"
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int)):
        return node.slice.value
    return None


def _unknown(node: ast.AST) -> Polarity:
    return dict.fromkeys(_indexes(node), 0)


def _merge(*parts: Polarity) -> Polarity:
    out: Polarity = {}
    for p in parts:
        for i, s in p.items():
            out[i] = s if out.get(i, s) == s else 0
    return out


def _flip(p: Polarity) -> Polarity:
    return {i: -s for i, s in p.items()}


def _truth(node: ast.AST) -> Polarity:
    """How the truth of ``node`` moves with each count."""
    if isinstance(node, ast.BoolOp):  # and / or: the truth of each operand, combined monotonically
        return _merge(*map(_truth, node.values))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _flip(_truth(node.operand))
    if isinstance(node, ast.Compare):
        if len(node.ops) != 1:
            return _unknown(node)
        op, left, right = node.ops[0], node.left, node.comparators[0]
        if isinstance(op, (ast.Gt, ast.GtE)):
            return _merge(_number(left)[0], _flip(_number(right)[0]))
        if isinstance(op, (ast.Lt, ast.LtE)):
            return _merge(_flip(_number(left)[0]), _number(right)[0])
        return _unknown(node)
    p, nonneg = _number(node)
    # the truth of a number is "not 0": it moves with the number only when the number cannot be negative
    return p if nonneg else _unknown(node)


def _number(node: ast.AST) -> tuple[Polarity, bool]:
    """How the value of ``node`` moves with each count, and whether it is never negative."""
    i = _index(node)
    if i is not None:
        return {i: 1}, True
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return {}, node.value >= 0
    if isinstance(node, (ast.Compare, ast.UnaryOp)) and (not isinstance(node, ast.UnaryOp) or isinstance(node.op, ast.Not)):
        return _truth(node), True  # a bool: 0 or 1
    if isinstance(node, ast.BinOp):
        (lp, ln), (rp, rn) = _number(node.left), _number(node.right)
        if isinstance(node.op, ast.Add):
            return _merge(lp, rp), ln and rn
        if isinstance(node.op, ast.Sub):
            return _merge(lp, _flip(rp)), False
        if isinstance(node.op, ast.Mult) and ln and rn:
            return _merge(lp, rp), True  # a product of non-negative factors rises with each
    return _unknown(node), False
