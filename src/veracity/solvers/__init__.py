"""Solvers over a graph and its intermediate bounds: the LP relaxation and exact MILP (HiGHS), kPoly.

- :mod:`veracity.solvers.lp`: :class:`~veracity.solvers.lp.Model` (a graph as a HiGHS model, with
  replaceable per-op encoders), :func:`~veracity.solvers.lp.lp_bounds`, :func:`~veracity.solvers.lp.refine_bounds`;
- :mod:`veracity.solvers.milp`: exact minima and decisions of spec cases on piecewise-linear graphs;
- :mod:`veracity.solvers.kpoly`: multi-neuron (k-ReLU) constraints added to the LP.
"""
