"""Compile a site model once into matrices, with every input an affine map into its vectors.

Pyomo's LinearStandardFormCompiler turns the model into A (rows x columns), once. The inputs
(mutable Params) only appear in right-hand sides, variable bounds and objective coefficients
(cloud.optimizer.devices' rule), each of which is then an affine function of the parameter vector p:

    cost = c0 + Mc p,  row_lo/up = r0 + Mr p,  col_lo/up = b0 + Mb p

This module extracts those maps by walking the (small, param-only) bound and coefficient
expressions, checks them against the compiler's own numbers, and keeps nothing of Pyomo: a
CompiledSite is numpy arrays, picklable to a worker process, ~1 MB for a 288-step home.
A re-solve is then a few sparse matrix-vector products and a warm HiGHS run (cloud.optimizer.solve),
not a Pyomo model update (measured in bench/optimize.py: faster, and ~10x less memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo
import scipy.sparse as sp  # type: ignore[import-untyped,import-not-found,unused-ignore]
from pyomo.common.gc_manager import PauseGC
from pyomo.core.expr.numeric_expr import (
    DivisionExpression,
    NegationExpression,
    ProductExpression,
    SumExpression,
)
from pyomo.repn import generate_standard_repn
from pyomo.repn.plugins.standard_form import LinearStandardFormCompiler

from tendril_transactive.cloud.optimizer.devices import FloatArray, ParamValues

IntArray = npt.NDArray[np.int32]
INF = float("inf")


class CompileError(ValueError):
    """A model the matrix path cannot represent (an input inside the constraint matrix)."""


@dataclass(frozen=True)
class Affine:
    """value = const + matrix @ p (matrix rows are empty where const is infinite)."""

    const: FloatArray
    matrix: sp.csr_array

    def __call__(self, p: FloatArray) -> FloatArray:
        out: FloatArray = self.const + self.matrix @ p
        return out


@dataclass(frozen=True)
class CompiledSite:
    n_cols: int
    n_rows: int
    a_start: IntArray  # CSC column starts
    a_index: IntArray
    a_value: FloatArray
    integer: npt.NDArray[np.bool_]  # per column
    cost: Affine
    row_lo: Affine
    row_up: Affine
    col_lo: Affine
    col_up: Affine
    params: dict[str, slice]  # mutable Param name -> its slice of p
    columns: dict[str, IntArray]  # Var name -> column per index in order (-1: not in the matrix)

    @property
    def n_params(self) -> int:
        return max((s.stop for s in self.params.values()), default=0)

    def pack(self, values: ParamValues) -> FloatArray:
        """The parameter vector p for one solve; every Param must be given, with its length."""
        p = np.empty(self.n_params)
        missing = set(self.params) - set(values)
        if missing:
            raise ValueError(f"inputs missing for {', '.join(sorted(missing))}")
        extra = set(values) - set(self.params)
        if extra:
            raise ValueError(f"inputs for parameters the model does not have: {', '.join(sorted(extra))}")
        for name, sl in self.params.items():
            arr = np.atleast_1d(np.asarray(values[name], dtype=float))
            if len(arr) != sl.stop - sl.start:
                raise ValueError(f"input {name} has {len(arr)} values, the model needs {sl.stop - sl.start}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"input {name} has non-finite values")
            p[sl] = arr
        return p

    def values(self, x: FloatArray, var: str) -> FloatArray:
        """A Var's solution values in index order (0 where the compiler dropped an unused column)."""
        cols = self.columns[var]
        return np.where(cols >= 0, x[np.maximum(cols, 0)], 0.0)


class _Params:
    """Numbering of every mutable ParamData of a model into the vector p."""

    def __init__(self, m: pyo.ConcreteModel) -> None:
        self.index: dict[int, int] = {}
        self.slices: dict[str, slice] = {}
        self.current: list[float] = []
        for param in m.component_objects(pyo.Param, active=True, descend_into=True):
            if not param.mutable:
                continue
            start = len(self.current)
            for data in param.values():
                self.index[id(data)] = len(self.current)
                self.current.append(float(pyo.value(data)))
            self.slices[param.local_name] = slice(start, len(self.current))

    def affine(self, expr: Any) -> tuple[float, dict[int, float]]:
        """expr = const + sum(coef * p[i]) for an expression of numbers and mutable Params."""
        if expr is None:
            return INF, {}
        if isinstance(expr, int | float):
            return float(expr), {}
        pid = self.index.get(id(expr))
        if pid is not None:
            return 0.0, {pid: 1.0}
        if not getattr(expr, "is_expression_type", lambda: False)():
            if getattr(expr, "is_potentially_variable", lambda: True)():
                raise CompileError(f"a variable appears where only inputs may: {expr}")
            return float(pyo.value(expr)), {}  # an immutable Param or a constant
        if isinstance(expr, SumExpression):
            const, coefs = 0.0, dict[int, float]()
            for arg in expr.args:
                c, d = self.affine(arg)
                const += c
                for k, v in d.items():
                    coefs[k] = coefs.get(k, 0.0) + v
            return const, coefs
        if isinstance(expr, NegationExpression):
            c, d = self.affine(expr.args[0])
            return -c, {k: -v for k, v in d.items()}
        if isinstance(expr, ProductExpression):
            (c1, d1), (c2, d2) = self.affine(expr.args[0]), self.affine(expr.args[1])
            if d1 and d2:
                raise CompileError(f"product of two inputs is not affine: {expr}")
            if d1:
                return c1 * c2, {k: v * c2 for k, v in d1.items()}
            return c1 * c2, {k: v * c1 for k, v in d2.items()}
        if isinstance(expr, DivisionExpression):
            (c1, d1), (c2, d2) = self.affine(expr.args[0]), self.affine(expr.args[1])
            if d2:
                raise CompileError(f"division by an input is not affine: {expr}")
            return c1 / c2, {k: v / c2 for k, v in d1.items()}
        raise CompileError(f"unsupported input expression {type(expr).__name__}: {expr}")


def _affine_rows(entries: list[tuple[float, dict[int, float]]], n_params: int) -> Affine:
    const = np.array([c for c, _ in entries], dtype=float)
    rows, cols, vals = [], [], []
    for i, (c, d) in enumerate(entries):
        if d and not np.isfinite(c):
            raise CompileError("an infinite bound cannot depend on inputs")
        for k, v in d.items():
            rows.append(i)
            cols.append(k)
            vals.append(v)
    matrix = sp.csr_array((vals, (rows, cols)), shape=(len(entries), n_params))
    return Affine(const, matrix)


def _neg(entry: tuple[float, dict[int, float]]) -> tuple[float, dict[int, float]]:
    return -entry[0], {k: -v for k, v in entry[1].items()}


def _sub(a: tuple[float, dict[int, float]], b: tuple[float, dict[int, float]]) -> tuple[float, dict[int, float]]:
    coefs = dict(a[1])
    for k, v in b[1].items():
        coefs[k] = coefs.get(k, 0.0) - v
    return a[0] - b[0], coefs


def compile_model(m: pyo.ConcreteModel) -> CompiledSite:
    """Matrices and affine input maps of a linear (MI)LP site model; CompileError if inputs reach A."""
    with PauseGC():  # Pyomo makes many small objects here; collecting them mid-way costs ~40 %
        return _compile(m)


def _compile(m: pyo.ConcreteModel) -> CompiledSite:
    info = LinearStandardFormCompiler().write(m, mixed_form=True, set_sense=pyo.minimize)
    params = _Params(m)
    n_p = len(params.current)
    col_of = {id(v): j for j, v in enumerate(info.columns)}

    # Objective coefficients (one objective, minimised).
    (obj,) = info.objectives
    repn = generate_standard_repn(obj.expr, compute_values=False)
    cost: list[tuple[float, dict[int, float]]] = [(0.0, {})] * len(info.columns)
    for var, coef in zip(repn.linear_vars, repn.linear_coefs, strict=True):
        j = col_of.get(id(var))
        if j is not None:
            cost[j] = params.affine(coef)

    # Row bounds: (bound - body constant), by the row's sense.
    row_lo, row_up = [], []
    for con, sense in info.rows:
        lb, body, ub = con.to_bounded_expression(False)
        body_repn = generate_standard_repn(body, compute_values=False)
        for coef in body_repn.linear_coefs:
            if not isinstance(coef, int | float) and params.affine(coef)[1]:
                raise CompileError(f"row {con.name}: an input multiplies a variable ({coef}); inputs may "
                                   "only enter bounds, right-hand sides and costs")
        offset = params.affine(body_repn.constant)
        if sense == 0:
            rhs = _sub(params.affine(ub), offset)
            row_lo.append(rhs)
            row_up.append(rhs)
        elif sense == 1:
            row_lo.append((-INF, {}))
            row_up.append(_sub(params.affine(ub), offset))
        else:
            row_lo.append(_sub(params.affine(lb), offset))
            row_up.append((INF, {}))

    col_lo, col_up = [], []
    for v in info.columns:
        if v.fixed:
            raise CompileError(f"fixed variable {v.name}: give it equal bounds instead")
        lo = params.affine(v.lower)
        col_lo.append((-INF, {}) if lo[0] == INF and not lo[1] else lo)
        col_up.append(params.affine(v.upper))

    compiled = CompiledSite(
        n_cols=len(info.columns), n_rows=len(info.rows),
        a_start=info.A.indptr.astype(np.int32), a_index=info.A.indices.astype(np.int32),
        a_value=info.A.data.astype(float),
        integer=np.array([v.is_integer() or v.is_binary() for v in info.columns], dtype=bool),
        cost=_affine_rows(cost, n_p), row_lo=_affine_rows(row_lo, n_p), row_up=_affine_rows(row_up, n_p),
        col_lo=_affine_rows(col_lo, n_p), col_up=_affine_rows(col_up, n_p),
        params=params.slices, columns=_columns(m, col_of))
    _self_check(compiled, info, np.array(params.current))
    return compiled


def _columns(m: pyo.ConcreteModel, col_of: dict[int, int]) -> dict[str, IntArray]:
    out = {}
    for var in m.component_objects(pyo.Var, active=True, descend_into=True):
        out[var.local_name] = np.array([col_of.get(id(v), -1) for v in var.values()], dtype=np.int32)
    return out


def _self_check(c: CompiledSite, info: Any, p: FloatArray) -> None:
    """The affine maps at the model's current inputs must reproduce the compiler's numbers."""
    dense_c = np.asarray(info.c.todense()).ravel() if info.c.shape[0] else np.zeros(c.n_cols)
    if not np.allclose(c.cost(p), dense_c, rtol=1e-9, atol=1e-9):
        raise CompileError("objective coefficients from the input map differ from the compiler's")
    rhs = np.asarray(info.rhs, dtype=float)
    senses = np.array([s for _, s in info.rows])
    mine = np.where(senses == -1, c.row_lo(p), c.row_up(p))
    if not np.allclose(mine, rhs, rtol=1e-9, atol=1e-9):
        bad = int(np.flatnonzero(~np.isclose(mine, rhs, rtol=1e-9, atol=1e-9))[0])
        raise CompileError(f"row {info.rows[bad][0].name}: input map gives {mine[bad]}, compiler {rhs[bad]}")
