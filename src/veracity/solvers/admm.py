"""Operator splitting (ADMM, the DeepSplit scheme) for the LP relaxation of sequential ReLU networks.

The network is read as a chain: input box → affine map A_0 → ReLU → A_1 → ReLU → ... → A_L, where each
affine map is a run of the graph's linear nodes (linear, conv, scale_shift, reshape, pad, avgpool...), applied
matrix-free through the ops' ``apply``/``adjoint``. Every set of the chain (box, affine map, ReLU triangle
given the intermediate bounds) has its own copy of its input and output; consensus variables between sets
are averaged (the x-update), every set is projected on in closed form (box: clip; ReLU: the triangle, per
neuron; affine: ``(I + AᵀA) y = ŷ + Aᵀ(ẑ − b)`` with a cached inverse for small dense maps or warm-started
conjugate gradient otherwise), then scaled duals are updated, with over-relaxation and residual-balancing ρ.

Reported bounds never come from the primal iterate. For multipliers ν_k on the affine equalities
``z_k = A_k x_k + b_k`` (here ν_k = ρ λ_k, the scaled dual of the k-th ReLU's input copy, and ν_L = −c)
the Lagrangian separates: a box term ``min −(A_0ᵀν_0)·x_0`` (a corner per input), and per ReLU neuron
``min ν z − (A_{k+1}ᵀν_{k+1}) x`` over the triangle (one of its three vertices) or the stable segment,
plus the constants ``−Σ ν_k·b_k``. That value, evaluated in float64 minus a bound on its rounding error,
is a lower bound of the LP optimum for any ν. Until ADMM converges its ν disagree from layer to layer, which
costs that bound much; so the same evaluation is also made at the multipliers of a CROWN pass (consistent by
construction) whose lower-line slopes are read off ν (ν_k = −slope · the coefficient of the ReLU's output), and
once more with the slopes of clearly active or inactive neurons of the primal iterate set to 1 or 0. Any slopes
in [0, 1] give a valid bound, and the LP's optimal ones give the LP optimum. The running best is kept.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import torch

from veracity.bounds.crown import crown_bounds, spec_bounds
from veracity.bounds.ibp import Bounds, ibp_node, spec_interval
from veracity.graph import ops
from veracity.graph.ir import Graph, Node, UnsupportedError

EPS64 = float(torch.finfo(torch.float64).eps)
# Affine maps with at most this many matrix entries (and no convolution) get an explicit matrix and inverse.
DENSE_ENTRIES = 1 << 22
# A dense map wider than tall projects by the Woodbury form, with the small inverse (I + AAᵀ)⁻¹, unless its norm
# exceeds WOODBURY_MAX_NORM and it has at most DIRECT_ENTRIES inputs squared: then by (I + AᵀA)⁻¹, as the
# Woodbury form's subtraction loses float32 accuracy (‖A‖ 31 on mnist_fc's first layer: errors of 4e-3).
WOODBURY_MAX_NORM = 4.0
DIRECT_ENTRIES = 1 << 21
# Matrix-free maps with at most this many inputs (times nodes) are tried as sparse matrices, kept if at most this
# many nonzeros and faster (small convolutions: the transposed convolution is slow at few channels).
SPARSE_BUILD_MAX = 1 << 15
SPARSE_NNZ_MAX = 1 << 24
# A ReLU input of the iterate farther than this share of its bound width from 0 fixes its lower slope (1 or 0).
PRIMAL_MARGIN = 0.02
# Weight of the past in the running average of the multipliers (per check) whose slopes give a third bound.
NU_AVERAGE = 0.5
# Residual balancing: ρ doubles (halves) when the squared primal residual exceeds the dual one this many times.
RHO_BALANCE = 100.0


# -- the chain of affine maps ---------------------------------------------------------------------------


class _Affine:
    """A run of single-input linear nodes as one affine map ``x ↦ A x + b`` on flat vectors."""

    def __init__(self, graph: Graph, nodes: list[Node], in_shape: tuple[int, ...], out_name: str,
                 solver: str, dtype: torch.dtype, device):
        self.graph, self.nodes, self.in_shape = graph, nodes, tuple(in_shape)
        self.out_shape = tuple(nodes[-1].shape) if nodes else self.in_shape
        self.out_name = out_name
        self.n_in, self.n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        self.dtype, self.device = dtype, device
        self.b64 = self._const(torch.float64)
        self.b = self.b64.to(dtype)
        has_conv = any(n.op in ("conv", "conv_transpose") for n in nodes)
        dense_ok = self.n_in * self.n_out + min(self.n_in, self.n_out) ** 2 <= DENSE_ENTRIES
        if solver not in ("auto", "dense", "cg"):
            raise ValueError(f"unknown affine solver {solver!r}; choose auto, dense or cg")
        self.dense = solver == "dense" or (solver == "auto" and dense_ok and not has_conv)
        self.M = self.S = self.ST = None  # S, ST: A and Aᵀ as sparse matrices, where :meth:`tune` found them faster
        self._tuned = 0  # the batch size :meth:`tune` chose for
        self.direct = self.n_in <= self.n_out
        if self.dense:
            eye = torch.eye(self.n_in, dtype=torch.float64, device=device)
            M = self._apply(eye, torch.float64).T.contiguous()  # A, (n_out, n_in)
            if not self.direct and self.n_in ** 2 <= DIRECT_ENTRIES:
                self.direct = float(torch.linalg.eigvalsh(M @ M.T).max()) > WOODBURY_MAX_NORM ** 2
            G = M.T @ M if self.direct else M @ M.T
            G.diagonal().add_(1.0)
            # (I + AᵀA)⁻¹, or the Woodbury core (I + A Aᵀ)⁻¹ used as y = r − Aᵀ Q A r
            self.M, self.Q = M.to(dtype), torch.cholesky_inverse(torch.linalg.cholesky(G)).to(dtype)

    def _params(self, n: Node, dtype):
        return self.graph.params(n, dtype, self.device)

    def _apply(self, x: torch.Tensor, dtype) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.in_shape)
        for n in self.nodes:
            x = ops.OPS[n.op].apply(n, self._params(n, dtype), 0, x)
        return x.reshape(x.shape[0], -1)

    def _adjoint(self, a: torch.Tensor, dtype) -> torch.Tensor:
        a = a.reshape(a.shape[0], *self.out_shape)
        for n in reversed(self.nodes):
            a = ops.OPS[n.op].adjoint(n, self._params(n, dtype), 0, a)
        return a.reshape(a.shape[0], -1)

    def abs_fwd(self, x: torch.Tensor) -> torch.Tensor:
        """|A_j| ··· |A_1| x (float64), an upper bound of |A| x for x ≥ 0."""
        x = x.reshape(x.shape[0], *self.in_shape)
        for n in self.nodes:
            x = ops.OPS[n.op].abs(n, self._params(n, torch.float64), 0, x)
        return x.reshape(x.shape[0], -1)

    def _const(self, dtype) -> torch.Tensor:
        x = torch.zeros(1, *self.in_shape, dtype=dtype, device=self.device)
        for n in self.nodes:
            x = ops.OPS[n.op].forward(n, self._params(n, dtype), x)
        return x.reshape(-1)

    def fwd(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return x @ self.M.T
        return (self.S @ x.T).T if self.S is not None else self._apply(x, self.dtype)

    def adj(self, a: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return a @ self.M
        return (self.ST @ a.T).T if self.ST is not None else self._adjoint(a, self.dtype)

    def sparse(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A and Aᵀ as sparse CSR matrices (``dtype``), or None past SPARSE_NNZ_MAX nonzeros."""
        rows, cols, vals = [], [], []
        for s in range(0, self.n_in, 512):
            k = min(512, self.n_in - s)
            eye = torch.zeros(k, self.n_in, dtype=self.dtype, device=self.device)
            eye[torch.arange(k), s + torch.arange(k)] = 1.0
            col = self._apply(eye, self.dtype)  # (k, n_out): columns s.. of A
            i, j = col.nonzero(as_tuple=True)
            rows.append(j), cols.append(i + s), vals.append(col[i, j])
            if sum(v.numel() for v in vals) > SPARSE_NNZ_MAX:
                return None
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            A = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals),
                                        (self.n_out, self.n_in), check_invariants=False)
            return A.coalesce().to_sparse_csr(), A.t().coalesce().to_sparse_csr()

    def tune(self, n: int) -> None:
        """For a matrix-free map, apply A (Aᵀ) as a sparse matrix where that is faster than the ops at batch n."""
        if self.dense or n == self._tuned or self.n_in * max(len(self.nodes), 1) > SPARSE_BUILD_MAX:
            return
        self._tuned, self.S, self.ST = n, None, None
        mats = self.sparse()
        if mats is None:
            return
        S, ST = mats

        def clock(f, x):  # the fastest of 5 calls, after a first one
            f(x)
            times = []
            for _ in range(5):
                t = time.perf_counter()
                f(x)
                times.append(time.perf_counter() - t)
            return min(times)

        x = torch.randn(n, self.n_in, dtype=self.dtype, device=self.device)
        a = torch.randn(n, self.n_out, dtype=self.dtype, device=self.device)
        if clock(lambda v: (S @ v.T).T, x) < clock(lambda v: self._apply(v, self.dtype), x):
            self.S = S
        if clock(lambda v: (ST @ v.T).T, a) < clock(lambda v: self._adjoint(v, self.dtype), a):
            self.ST = ST

    def adj64(self, a: torch.Tensor) -> torch.Tensor:
        return self._adjoint(a, torch.float64)

    def project(self, yh: torch.Tensor, zh: torch.Tensor, y0: torch.Tensor, cg_iters: int):
        """Nearest (y, A y + b) to (yh, zh): the solution of (I + AᵀA) y = yh + Aᵀ(zh − b)."""
        if self.dense:
            r = yh + self.adj(zh - self.b)
            y = r @ self.Q if self.direct else r - (r @ self.M.T @ self.Q) @ self.M
            return y, self.fwd(y) + self.b
        # conjugate gradient from y0, tracking A y along (one product each way per step)
        ay = self.fwd(y0)
        res = yh - y0 + self.adj(zh - self.b - ay)
        y, p = y0, res
        rs = (res * res).sum(1, keepdim=True)
        tiny = torch.finfo(res.dtype).tiny
        for _ in range(cg_iters):
            ap = self.fwd(p)
            Ap = p + self.adj(ap)
            a = rs / (p * Ap).sum(1, keepdim=True).clamp_min(tiny)
            y, ay = y + a * p, ay + a * ap
            res = res - a * Ap
            rs_new = (res * res).sum(1, keepdim=True)
            p = res + (rs_new / rs.clamp_min(tiny)) * p
            rs = rs_new
        return y, ay + self.b


@dataclass
class Chain:
    """A sequential ReLU network as affine maps ``affines[0..L]`` with ReLUs between them."""

    graph: Graph
    affines: list[_Affine]
    relus: list[str]  # ReLU node names; relus[k] follows affines[k]

    @property
    def pre_names(self) -> list[str]:
        """Nodes holding each ReLU's pre-activation bounds."""
        return [a.out_name for a in self.affines[: len(self.relus)]]


def chain_of(graph: Graph, upto: str | None = None, solver: str = "auto", dtype=torch.float32,
             device="cpu") -> Chain:
    """The chain of ``graph`` up to node ``upto`` (default its output); UnsupportedError if not sequential."""
    upto = upto or graph.output_name
    names = list(graph.nodes)
    consumers = graph.consumers()
    supported = "input, relu and single-input linear ops (linear, conv, scale_shift, reshape, pad, avgpool...)"
    prev = graph.input_name
    runs: list[list[Node]] = [[]]
    relus: list[str] = []
    run_in = [graph.input_name]
    for name in names[names.index(graph.input_name) + 1: names.index(upto) + 1]:
        n = graph.nodes[name]
        where = n.origin or n.name
        if n.inputs != (prev,) or (prev != upto and len(consumers[prev]) != 1):
            raise UnsupportedError(f"ADMM needs a sequential network; node {where} ({n.op}) branches or joins")
        if n.op == "relu":
            relus.append(name)
            runs.append([])
            run_in.append(name)
        elif ops.OPS[n.op].linear and ops.OPS[n.op].n_inputs == 1:
            runs[-1].append(n)
        else:
            raise UnsupportedError(f"ADMM has no encoding for op '{n.op}' ({where}); supported: {supported}")
        prev = name
    affines = []
    for k, run in enumerate(runs):
        in_shape = graph.nodes[run_in[k]].shape
        out_name = run[-1].name if run else run_in[k]
        affines.append(_Affine(graph, run, in_shape, out_name, solver, dtype, device))
    return Chain(graph, affines, relus)


# -- intermediate bounds ----------------------------------------------------------------------------------


def _chain_bounds(chain: Chain, pre: Bounds, lower: torch.Tensor, upper: torch.Tensor) -> list[tuple]:
    """Float64 pre-activation bounds (B, n) of each ReLU: ``pre`` intersected with IBP along the chain."""
    graph = chain.graph
    B = lower.shape[0]
    bounds: Bounds = {graph.input_name: (lower.reshape(B, *graph.input_shape), upper.reshape(B, *graph.input_shape))}
    wanted = set(chain.pre_names)
    out = []
    for a, r in zip(chain.affines, chain.relus + [None], strict=True):
        for n in a.nodes:
            l, u = ibp_node(graph, n, bounds, B, torch.float64, lower.device)
            if n.name in pre:
                l = torch.maximum(l, pre[n.name][0].to(l))
                u = torch.minimum(u, pre[n.name][1].to(u))
            bounds[n.name] = (l, torch.maximum(l, u))
        if r is None:
            break
        l, u = bounds[a.out_name]
        if a.out_name in wanted:
            out.append((l.reshape(B, -1), u.reshape(B, -1)))
        bounds[r] = (l.clamp(min=0), u.clamp(min=0))
    return out


# -- the solver ----------------------------------------------------------------------------------------------


@dataclass
class AdmmResult:
    """Sound lower bounds (B, S) of ``C · y`` and how they were reached.

    ``trace``: (seconds, iteration, bounds (B, S)) at every check when asked for; ``value``: the primal
    objective at the last iterate (not a bound).
    """

    lower: torch.Tensor
    value: torch.Tensor
    iterations: int
    converged: bool
    seconds: float
    trace: list[tuple[float, int, torch.Tensor]] = field(default_factory=list)


def _project_relu(a, b, l, u):
    """Nearest point of the ReLU hull over [l, u] to (a, b), element-wise (all tensors of one shape)."""
    zero = torch.zeros_like(a)
    # stable active (l >= 0): the segment {(t, t)}; stable inactive (u <= 0): {(t, 0)}
    t = torch.minimum(torch.maximum((a + b) / 2, l), u)
    s = torch.minimum(torch.maximum(a, l), u)
    # unstable: the triangle (l, 0), (0, 0), (u, u); inside, or the nearest of its three edges
    e1z = torch.minimum(torch.maximum(a, l), zero)  # (l,0)-(0,0)
    e2 = torch.minimum(torch.maximum((a + b) / 2, zero), u.clamp(min=0))  # (0,0)-(u,u)
    w = (u - l).clamp(min=1e-30)
    tt = (((a - l) * w + b * u) / (w * w + u * u).clamp(min=1e-30)).clamp(0, 1)  # (l,0)-(u,u)
    e3z, e3x = l + tt * w, tt * u
    d1 = (a - e1z) ** 2 + b**2
    d2 = (a - e2) ** 2 + (b - e2) ** 2
    d3 = (a - e3z) ** 2 + (b - e3x) ** 2
    use1 = (d1 <= d2) & (d1 <= d3)
    use2 = ~use1 & (d2 <= d3)
    pz = torch.where(use1, e1z, torch.where(use2, e2, e3z))
    px = torch.where(use1, zero, torch.where(use2, e2, e3x))
    inside = (b >= 0) & (b >= a) & (b * w <= u * (a - l))
    pz, px = torch.where(inside, a, pz), torch.where(inside, b, px)
    active, dead = l >= 0, u <= 0
    z = torch.where(active, t, torch.where(dead, s, pz))
    x = torch.where(active, t, torch.where(dead, zero, px))
    return z, x


def _relu_min(p, q, l, u):
    """min of p z + q x over the ReLU hull over [l, u] (element-wise, float64), and a magnitude for rounding."""
    pq = p + q
    active, dead = l >= 0, u <= 0
    m_act = torch.minimum(pq * l, pq * u)
    m_dead = torch.minimum(p * l, p * u)
    m_un = torch.minimum(torch.minimum(p * l, torch.zeros_like(p)), pq * u)
    m = torch.where(active, m_act, torch.where(dead, m_dead, m_un))
    mag = (p.abs() + q.abs()) * torch.maximum(l.abs(), u.abs())
    return m.sum(1), mag.sum(1)


class _Problem:
    """N objectives (box index ``box_of[i]``, cost ``c[i]``) over one chain; the ADMM state and its dual bound."""

    def __init__(self, chain: Chain, l0, u0, pre_bounds, c, box_of, dtype, device):
        self.chain, self.dtype, self.device = chain, dtype, device
        N = c.shape[0]
        self.N = N
        self.c64 = c.to(device, torch.float64)
        self.cnorm = self.c64.norm(dim=1, keepdim=True)
        self.c = (self.c64 / self.cnorm.clamp(min=1e-300)).to(dtype)
        self.box64 = (l0[box_of].to(device, torch.float64), u0[box_of].to(device, torch.float64))
        self.pre64 = [(l[box_of].to(device, torch.float64), u[box_of].to(device, torch.float64)) for l, u in pre_bounds]
        self.box = tuple(t.to(dtype) for t in self.box64)
        self.pre = [(l.to(dtype), u.to(dtype)) for l, u in self.pre64]
        # |A_k| x̄_k for x̄_k ≥ |x_k| over the box or the ReLU bounds: |ν_k|·that bounds |A_kᵀν_k|·x̄_k (rounding)
        xbar = [torch.maximum(*(t.abs() for t in self.box64))] + [u.abs().maximum(l.abs()) for l, u in self.pre64]
        self.abs_out = [a.abs_fwd(x) for a, x in zip(chain.affines, xbar, strict=True)]
        for a in chain.affines:
            a.tune(N)
        self.n_elements = sum(a.n_in + a.n_out for a in chain.affines) + 16
        self.max_fan = max(max(a.n_in, 1) for a in chain.affines) * max(1, max(len(a.nodes) for a in chain.affines))

    def start(self):
        """A feasible primal point: the network at the box centre (clipped to the bounds); zero duals."""
        x = (self.box[0] + self.box[1]) / 2
        self.zb = x
        self.ya, self.za, self.yr, self.zr = [], [], [], []
        for k, a in enumerate(self.chain.affines):
            self.ya.append(x)
            z = a.fwd(x) + a.b
            self.za.append(z)
            if k < len(self.chain.relus):
                l, u = self.pre[k]
                z = torch.minimum(torch.maximum(z, l), u)
                self.yr.append(z)
                x = z.clamp(min=0)
                self.zr.append(x)
        zeros = torch.zeros_like
        self.mub = zeros(self.zb)
        self.la, self.ma = [zeros(t) for t in self.ya], [zeros(t) for t in self.za]
        self.lr, self.mr = [zeros(t) for t in self.yr], [zeros(t) for t in self.zr]

    def backward(self, slopes=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Multipliers ν_k (float64, original scale) of a CROWN pass, and g_k = A_kᵀ ν_k: every ReLU relaxed by its
        upper line where its output's coefficient is negative, else by the lower line of slope ``slopes[k]``
        (default adaptive).

        They are consistent across every interface, so the Lagrangian at them equals that CROWN bound.
        """
        aff, L = self.chain.affines, len(self.chain.relus)
        nu, g = [None] * (L + 1), [None] * (L + 1)
        nu[L] = -self.c64
        for k in range(L - 1, -1, -1):
            g[k + 1] = aff[k + 1].adj64(nu[k + 1])
            a = -g[k + 1]  # coefficient of the ReLU's output
            l, u = self.pre64[k]
            unstable = (l < 0) & (u > 0)
            up = torch.where(unstable, u / (u - l).clamp(min=1e-300), (l >= 0).to(l.dtype))
            s = (u >= -l).to(l.dtype) if slopes is None else slopes[k]
            low = torch.where(unstable, s, (l >= 0).to(l.dtype))
            nu[k] = -torch.where(a > 0, a * low, a * up)
        g[0] = aff[0].adj64(nu[0])
        return nu, g

    def rho_guess(self, crown_nu) -> torch.Tensor:
        """A starting ρ (N, 1): the size of CROWN's multipliers ``crown_nu`` (unit objective) over that of the
        start point."""
        nu = sum((n / self.cnorm.clamp(min=1e-300)).pow(2).sum(1) for n in crown_nu)
        x = sum(t.to(torch.float64).pow(2).sum(1) for t in self.ya + self.za)
        rho = (nu / x.clamp(min=1e-300)).sqrt()
        return torch.where(torch.isfinite(rho) & (rho > 0), rho, 1.0).clamp(1e-6, 1e6).unsqueeze(1).to(self.dtype)

    def warm_start(self, rho, nu, g):
        """Scaled duals of CROWN's multipliers ``nu`` (g_k = A_kᵀ ν_k), from :meth:`backward`."""
        L = len(self.chain.relus)
        r = rho.to(torch.float64) * self.cnorm.clamp(min=1e-300)
        for k in range(L + 1):
            self.la[k] = (g[k] / r).to(self.dtype)
            self.ma[k] = (-nu[k] / r).to(self.dtype)
            if k < L:
                self.lr[k] = (nu[k] / r).to(self.dtype)
        self.mub = -self.la[0]
        for k in range(L):
            self.mr[k] = -self.la[k + 1]

    def consensus(self, rho):
        """The x-update: averages of the copies on each side of every interface."""
        L = len(self.chain.relus)
        xin = [(self.zb + self.mub + self.ya[0] + self.la[0]) / 2]
        xout = []
        for k in range(L):
            xout.append((self.za[k] + self.ma[k] + self.yr[k] + self.lr[k]) / 2)
            xin.append((self.zr[k] + self.mr[k] + self.ya[k + 1] + self.la[k + 1]) / 2)
        xout.append(self.za[L] + self.ma[L] - self.c / rho)
        return xin, xout

    def step(self, rho, alpha, cg_iters):
        """One iteration; returns squared primal and dual residuals per objective (N,)."""
        L = len(self.chain.relus)
        xin, xout = self.consensus(rho)
        old = getattr(self, "_x", None)
        r2 = torch.zeros(self.N, dtype=self.dtype, device=self.device)

        def sq(t):
            return (t * t).sum(1)

        h = alpha * xin[0] + (1 - alpha) * self.zb
        self.zb = torch.minimum(torch.maximum(h - self.mub, self.box[0]), self.box[1])
        self.mub = self.mub + self.zb - h
        r2 += sq(self.zb - xin[0])
        for k in range(L + 1):
            hy = alpha * xin[k] + (1 - alpha) * self.ya[k]
            hz = alpha * xout[k] + (1 - alpha) * self.za[k]
            y, z = self.chain.affines[k].project(hy - self.la[k], hz - self.ma[k], self.ya[k], cg_iters)
            self.la[k] = self.la[k] + y - hy
            self.ma[k] = self.ma[k] + z - hz
            self.ya[k], self.za[k] = y, z
            r2 += sq(y - xin[k]) + sq(z - xout[k])
        for k in range(L):
            hy = alpha * xout[k] + (1 - alpha) * self.yr[k]
            hz = alpha * xin[k + 1] + (1 - alpha) * self.zr[k]
            l, u = self.pre[k]
            y, z = _project_relu(hy - self.lr[k], hz - self.mr[k], l, u)
            self.lr[k] = self.lr[k] + y - hy
            self.mr[k] = self.mr[k] + z - hz
            self.yr[k], self.zr[k] = y, z
            r2 += sq(y - xout[k]) + sq(z - xin[k + 1])
        self._x = xin + xout
        s2 = torch.zeros_like(r2)
        if old is not None:
            for a, b in zip(self._x, old, strict=True):
                s2 += 2 * sq(a - b)
        s2 = s2 * (rho.squeeze(1) ** 2)
        return r2, s2

    def rescale(self, factor):
        """Scaled duals after ρ is multiplied by ``factor`` (N, 1)."""
        self.mub = self.mub / factor
        self.la = [t / factor for t in self.la]
        self.ma = [t / factor for t in self.ma]
        self.lr = [t / factor for t in self.lr]
        self.mr = [t / factor for t in self.mr]

    def value(self):
        """The primal objective c · x_out at the current iterate (in the original scale; not a bound)."""
        return (self.za[-1].to(torch.float64) * self.c64).sum(1)

    def admm_nu(self, rho) -> list[torch.Tensor]:
        """The iterate's multipliers ν_k = ρ λ_k (float64, original scale), ν_L = −c."""
        scale = self.cnorm * rho.to(torch.float64)
        return [t.to(torch.float64) * scale for t in self.lr] + [-self.c64]

    def slopes_of(self, nu, g) -> list[torch.Tensor]:
        """Lower-line slopes read off multipliers (ν_k = −slope · the coefficient −g_{k+1} of the ReLU's output)."""
        out = []
        for k in range(len(self.chain.relus)):
            a = -g[k + 1]
            out.append(torch.where(a > 0, -nu[k] / torch.where(a > 0, a, 1.0), 0.0).clamp(0, 1))
        return out

    def primal_slopes(self, slopes) -> list[torch.Tensor]:
        """``slopes``, except 1 (0) where the iterate's ReLU input is clearly above (below) 0, as at an LP optimum."""
        out = []
        for s, y, (l, u) in zip(slopes, self.yr, self.pre64, strict=True):
            y, margin = y.to(torch.float64), PRIMAL_MARGIN * (u - l)
            out.append(torch.where(y > margin, 1.0, torch.where(y < -margin, 0.0, s)))
        return out

    def dual_bound(self, rho) -> torch.Tensor:
        """The best of three sound lower bounds (N,): the Lagrangian at the iterate's multipliers, and the CROWN
        bounds (the Lagrangian at consistent multipliers) with the lower slopes implied by those multipliers and by
        their running average, each corrected by the primal iterate. Any slopes in [0, 1] give a valid bound;
        these approach the LP's."""
        nu = self.admm_nu(rho)
        g = [a.adj64(n) for a, n in zip(self.chain.affines, nu, strict=True)]
        avg = getattr(self, "_nu_avg", None)
        avg = nu if avg is None else [NU_AVERAGE * a + (1 - NU_AVERAGE) * n for a, n in zip(avg, nu, strict=True)]
        self._nu_avg = avg
        g_avg = [a.adj64(n) for a, n in zip(self.chain.affines, avg, strict=True)]
        bounds = [self.lagrangian(nu, g)]
        for m, gm in ((nu, g), (avg, g_avg)):
            bounds.append(self.lagrangian(*self.backward(self.primal_slopes(self.slopes_of(m, gm)))))
        return torch.stack(bounds).max(0).values

    def lagrangian(self, nu, g) -> torch.Tensor:
        """The Lagrangian lower bound (N,) for multipliers ``nu`` (float64; g_k = A_kᵀ ν_k), minus a bound on its
        rounding error."""
        aff, L = self.chain.affines, len(self.chain.relus)
        total = -sum((nu[k] * aff[k].b64).sum(1) for k in range(L + 1))
        mag = sum((nu[k].abs() * aff[k].b64.abs()).sum(1) for k in range(L + 1))
        lo, hi = self.box64
        total = total + torch.minimum(-g[0] * lo, -g[0] * hi).sum(1)
        mag = mag + sum((n.abs() * a).sum(1) for n, a in zip(nu, self.abs_out, strict=True))
        for k in range(L):
            l, u = self.pre64[k]
            m, mg = _relu_min(nu[k], -g[k + 1], l, u)
            total, mag = total + m, mag + mg
        bad = ~torch.isfinite(total)
        total = total - 4 * (self.n_elements + self.max_fan) * EPS64 * mag - 1e-300
        return torch.where(bad, torch.full_like(total, -math.inf), total)


def admm_minimize(graph: Graph, lower, upper, C, pre: Bounds | None = None, *, upto: str | None = None,
                  rho: float | None = None, alpha: float = 1.6, max_iter: int = 5000, tol: float = 1e-4,
                  check_every: int = 25, adaptive_rho: bool = True, time_limit: float | None = None,
                  cg_iters: int = 3, solver: str = "auto", dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", trace: bool = False, chain: Chain | None = None,
                  pre_bounds: list | None = None, warm_start: bool = True) -> AdmmResult:
    """Sound lower bounds of ``C · v`` over the LP (triangle) relaxation, for v the output (or node ``upto``).

    ``lower``/``upper``: (B, n_inputs) boxes; ``C``: (B, S, size of v); ``pre``: intermediate bounds (default
    full CROWN). Iterations run in ``dtype`` on ``device``; the bound is evaluated in float64 every
    ``check_every`` iterations and the best one is kept. Stops when, for every objective, the primal
    residual is below ``tol`` (relative) and the primal objective is within ``tol`` (relative) of the bound,
    or at ``max_iter``/``time_limit``. ``solver``: affine projections by explicit inverse ("dense"),
    conjugate gradient with ``cg_iters`` steps ("cg") or by size ("auto": dense unless a convolution or a
    large map). ``rho``: the starting penalty (default: per objective, the norm of CROWN's multipliers over that
    of the start point), then balanced by the residuals when ``adaptive_rho``.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    lower = torch.as_tensor(lower, dtype=torch.float64)
    upper = torch.as_tensor(upper, dtype=torch.float64)
    B = lower.shape[0] if lower.dim() > 1 else 1
    lower, upper = lower.reshape(B, -1), upper.reshape(B, -1)
    C = torch.as_tensor(C, dtype=torch.float64)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(B, -1, -1)
    S = C.shape[1]
    if chain is None:
        chain = chain_of(graph, upto, solver, dtype, device)
    if pre_bounds is None:
        if pre is None:
            pre = crown_bounds(graph, lower, upper)
        pre_bounds = _chain_bounds(chain, pre, lower, upper)
    if C.shape[2] != chain.affines[-1].n_out:
        raise ValueError(f"C has {C.shape[2]} columns; the bounded node has {chain.affines[-1].n_out} elements")
    box_of = torch.arange(B).repeat_interleave(S)
    prob = _Problem(chain, lower, upper, pre_bounds, C.reshape(B * S, -1), box_of, dtype, device)
    prob.start()
    N = B * S
    crown_nu, crown_g = prob.backward()  # adaptive slopes
    rho_t = prob.rho_guess(crown_nu) if rho is None else torch.full((N, 1), float(rho), dtype=dtype, device=device)
    if warm_start:
        prob.warm_start(rho_t, crown_nu, crown_g)
    best = torch.full((N,), -math.inf, dtype=torch.float64, device=device)
    history = []
    it, converged = 0, False
    zero_c = prob.cnorm.squeeze(1) == 0
    r2 = s2 = None
    while True:
        if it % check_every == 0 or it >= max_iter:
            best = torch.maximum(best, prob.dual_bound(rho_t))
            best = torch.where(zero_c, torch.zeros_like(best), best)
            elapsed = time.perf_counter() - t0
            if trace:
                history.append((elapsed, it, best.reshape(B, S).cpu()))
            if r2 is not None:
                val = prob.value()
                scale = torch.maximum(best.abs(), val.abs()) + prob.cnorm.squeeze(1) * 1e-3
                gap_ok = (val - best) <= tol * scale
                x2 = sum((t * t).sum(1) for t in prob._x)
                r_ok = r2.sqrt() <= tol * (1 + x2.sqrt())
                if bool((gap_ok & r_ok | zero_c).all()):
                    converged = True
                    break
                if adaptive_rho and it > 0:
                    up = r2 > RHO_BALANCE * s2
                    down = s2 > RHO_BALANCE * r2
                    f = torch.where(up, 2.0, torch.where(down, 0.5, 1.0)).to(dtype).unsqueeze(1)
                    rho_t = rho_t * f
                    prob.rescale(f)
            if it >= max_iter or (time_limit is not None and elapsed >= time_limit):
                break
        r2, s2 = prob.step(rho_t, alpha, cg_iters)
        it += 1
    value = prob.value().reshape(B, S).cpu()
    return AdmmResult(best.reshape(B, S).cpu(), value, it, converged, time.perf_counter() - t0, history)


def admm_bounds(graph: Graph, lower, upper, C=None, pre: Bounds | None = None, intersect: bool = True,
                **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound (lower, upper) bounds (B, S) of ``C · y`` by ADMM; C (B, S, n_outputs) or (S, n_outputs).

    ``pre``: intermediate bounds (default full CROWN). With ``intersect`` also intersected with CROWN's
    bounds from the same intermediate bounds. Options go to :func:`admm_minimize`.
    """
    lower = torch.as_tensor(lower, dtype=torch.float64)
    upper = torch.as_tensor(upper, dtype=torch.float64)
    B = lower.shape[0] if lower.dim() > 1 else 1
    lower, upper = lower.reshape(B, -1), upper.reshape(B, -1)
    C = torch.eye(graph.n_outputs, dtype=torch.float64) if C is None else torch.as_tensor(C, dtype=torch.float64)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(B, -1, -1)
    S = C.shape[1]
    if pre is None:
        pre = crown_bounds(graph, lower, upper)
    res = admm_minimize(graph, lower, upper, torch.cat([C, -C], 1), pre, **options)
    lo, hi = res.lower[:, :S], -res.lower[:, S:]
    if intersect:
        bounds = dict(pre)
        bounds[graph.input_name] = (lower.reshape(B, *graph.input_shape), upper.reshape(B, *graph.input_shape))
        bounds = {k: (v[0].to(torch.float64), v[1].to(torch.float64)) for k, v in bounds.items()}
        out = graph.output
        c_lo, c_hi = spec_bounds(graph, out.name, C.reshape(B, S, *out.shape), bounds)
        if out.name in bounds:
            i_lo, i_hi = spec_interval(C, bounds[out.name])
            c_lo, c_hi = torch.maximum(c_lo, i_lo), torch.minimum(c_hi, i_hi)
        lo, hi = torch.maximum(lo, c_lo), torch.minimum(hi, c_hi)
    return lo, hi


def admm_intermediate(graph: Graph, lower, upper, pre: Bounds | None = None, max_objectives: int = 4096,
                      **options) -> Bounds:
    """Intermediate bounds tightened layer by layer by ADMM (starting from ``pre``, default full CROWN).

    Each ReLU's unstable pre-activations are bounded from both sides, all neurons of a layer batched (in chunks
    of ``max_objectives``), with the bounds of earlier layers already tightened; the ReLU's own bounds follow.
    """
    lower = torch.as_tensor(lower, dtype=torch.float64)
    upper = torch.as_tensor(upper, dtype=torch.float64)
    B = lower.shape[0] if lower.dim() > 1 else 1
    lower, upper = lower.reshape(B, -1), upper.reshape(B, -1)
    out = dict(crown_bounds(graph, lower, upper) if pre is None else pre)
    out = {k: (v[0].to(torch.float64), v[1].to(torch.float64)) for k, v in out.items()}
    full = chain_of(graph, None, options.get("solver", "auto"), options.get("dtype", torch.float32),
                    options.get("device", "cpu"))
    for k, (name, relu) in enumerate(zip(full.pre_names, full.relus, strict=True)):
        sub = Chain(graph, full.affines[: k + 1], full.relus[:k])
        pb = _chain_bounds(sub, out, lower, upper) if k else []
        l, u = _chain_bounds(Chain(graph, full.affines[: k + 2], full.relus[: k + 1]), out, lower, upper)[k]
        rows = ((l < 0) & (u > 0)).any(0).nonzero().flatten()
        step = max(1, max_objectives // (2 * B))
        for s in range(0, rows.numel(), step):
            idx = rows[s: s + step]
            m = idx.numel()
            C = torch.zeros(B, 2 * m, l.shape[1], dtype=torch.float64)
            C[:, torch.arange(m), idx] = 1.0
            C[:, m + torch.arange(m), idx] = -1.0
            res = admm_minimize(graph, lower, upper, C, chain=sub, pre_bounds=pb, **options)
            l[:, idx] = torch.maximum(l[:, idx], res.lower[:, :m])
            u[:, idx] = torch.minimum(u[:, idx], -res.lower[:, m:])
        shape = graph.nodes[name].shape
        out[name] = (l.reshape(B, *shape), torch.maximum(l, u).reshape(B, *shape))
        out[relu] = (out[name][0].clamp(min=0), out[name][1].clamp(min=0))
    return out
