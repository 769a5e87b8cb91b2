"""torch.fx import: imported graphs reproduce the modules (float64), their linear ops are consistent, and
unsupported modules/functions fail with messages that name them."""

from __future__ import annotations

import copy
import math
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from veracity.graph import Graph, UnsupportedError, from_torch, ops


def randomize_bn(m: nn.Module, gen: torch.Generator) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters."""
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            c = mod.num_features
            mod.running_mean.copy_(torch.randn(c, generator=gen))
            mod.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            if mod.affine:
                mod.weight.data.copy_(torch.randn(c, generator=gen))
                mod.bias.data.copy_(torch.randn(c, generator=gen))
    return m


def check_linear_ops(graph: Graph, n: int = 2) -> None:
    """<apply(x), A> == <x, adjoint(A)> and |L| |x| >= |L x| for every linear node (float64)."""
    gen = torch.Generator().manual_seed(0)
    for node in graph.nodes.values():
        op = ops.OPS[node.op]
        if not op.linear:
            continue
        p = graph.params(node, torch.float64)
        for k, in_shape in enumerate(node.in_shapes):
            x = torch.randn(n, *in_shape, generator=gen, dtype=torch.float64)
            A = torch.randn(n, *node.shape, generator=gen, dtype=torch.float64)
            y = op.apply(node, p, k, x)
            lhs = (y * A).reshape(n, -1).sum(1)
            rhs = (x * op.adjoint(node, p, k, A)).reshape(n, -1).sum(1)
            tol = 1e-9 * (y.abs() * A.abs()).reshape(n, -1).sum(1).clamp_min(1.0)
            assert torch.all((lhs - rhs).abs() <= tol), f"{node}: adjoint is not the transpose of apply"
            assert torch.all(op.abs(node, p, k, x.abs()) >= y.abs() - 1e-9), f"{node}: abs"
            if op.nonneg:
                assert torch.all(op.apply(node, p, k, x.abs()) >= 0)


def assert_imports(module: nn.Module, in_shape, n: int = 8, tol: float = 1e-6, scale: float = 1.0) -> Graph:
    module = module.eval()
    graph = from_torch(module, in_shape)
    assert graph.input_shape == tuple(in_shape)
    ref = copy.deepcopy(module).double()
    x = torch.randn(n, *in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * scale
    with torch.no_grad():
        want = ref(x)
        got = graph(x)
    assert got.shape == want.shape
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"max error {err}"
    check_linear_ops(graph)
    return graph


# -- the networks the brief asks for --------------------------------------------------------------


def test_random_mlp():
    torch.manual_seed(0)
    for depth, width in [(1, 7), (3, 32), (5, 16)]:
        layers: list[nn.Module] = [nn.Flatten()]
        d = 12
        for i in range(depth):
            layers += [nn.Linear(d, width), [nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(0.1)][i % 4]]
            d = width
        layers.append(nn.Linear(d, 3))
        g = assert_imports(nn.Sequential(*layers), (3, 4))
        assert g.op_counts()["linear"] == depth + 1


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 5))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = y + self.block(y)  # residual
        y = self.pool(y)
        return self.head(y)


def test_small_cnn_with_batchnorm_maxpool_residual():
    m = randomize_bn(SmallCNN(), torch.Generator().manual_seed(2))
    g = assert_imports(m, (2, 8, 8))
    counts = g.op_counts()
    assert counts["conv"] == 2 and counts["maxpool"] == 1 and counts["add"] == 1 and counts["scale_shift"] == 2


def test_train_mode_module_imports_with_eval_semantics():
    m = randomize_bn(SmallCNN(), torch.Generator().manual_seed(3))
    g = from_torch(m.train(), (2, 8, 8))
    assert m.training  # not switched by the import
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(g(x), copy.deepcopy(m).eval().double()(x), atol=1e-9)


# -- one small module per supported layer / function ----------------------------------------------


class Fn(nn.Module):
    """Wraps a function of x (and of the module, for parameters/buffers) for tracing."""

    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for k, v in mods.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.fn(self, x)


class WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, -1.0, 2.0]).reshape(1, 3, 1, 1))
        self.scale = nn.Parameter(torch.tensor(0.25))
        self.W = nn.Parameter(torch.randn(4, 6))

    def forward(self, x):
        y = (x - self.mean) / 2.0 * self.scale
        return y @ self.W


MODULES = {
    "linear_no_bias_3d": (nn.Linear(4, 3, bias=False), (2, 4)),
    "conv1d": (nn.Conv1d(3, 4, 3, stride=2, padding=1), (3, 9)),
    "conv2d_stride_dil_groups": (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (4, 9, 8)),
    "conv2d_same": (nn.Conv2d(2, 3, (4, 3), padding="same"), (2, 7, 6)),
    "conv2d_valid": (nn.Conv2d(2, 3, 3, padding="valid"), (2, 7, 6)),
    "conv_transpose2d": (nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (3, 4, 5)),
    "conv_transpose2d_groups": (nn.ConvTranspose2d(4, 6, 2, stride=(2, 1), groups=2, dilation=(1, 2)), (4, 3, 3)),
    "batchnorm1d_flat": (nn.BatchNorm1d(5), (5,)),
    "batchnorm1d_seq": (nn.BatchNorm1d(3, affine=False), (3, 6)),
    "batchnorm2d": (nn.BatchNorm2d(3, eps=1e-3), (3, 4, 4)),
    "relu": (nn.ReLU(), (3, 4)),
    "leaky_relu": (nn.LeakyReLU(0.2), (3, 4)),
    "sigmoid": (nn.Sigmoid(), (3, 4)),
    "tanh": (nn.Tanh(), (3, 4)),
    "hardtanh": (nn.Hardtanh(-0.5, 0.75), (3, 4)),
    "relu6": (nn.ReLU6(), (3, 4)),
    "flatten_partial": (nn.Flatten(2, 3), (2, 3, 4, 5)),
    "unflatten": (nn.Unflatten(1, (3, 4)), (12,)),
    "identity_dropout": (nn.Sequential(nn.Identity(), nn.Dropout(0.5), nn.Dropout2d(0.1)), (2, 3, 3)),
    "maxpool2d_pad_stride": (nn.MaxPool2d(3, stride=2, padding=1), (2, 7, 6)),
    "maxpool2d_dilation": (nn.MaxPool2d(2, dilation=2), (2, 8, 8)),
    "maxpool1d": (nn.MaxPool1d(2), (3, 8)),
    "avgpool2d_pad_include": (nn.AvgPool2d(3, stride=2, padding=1), (2, 7, 6)),
    "avgpool2d_pad_exclude": (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 7, 6)),
    "avgpool1d": (nn.AvgPool1d(2), (3, 8)),
    "adaptive_avgpool_global": (nn.AdaptiveAvgPool2d(1), (3, 4, 6)),
    "adaptive_avgpool_divisible": (nn.AdaptiveAvgPool2d((2, 3)), (3, 4, 6)),
    "nested_sequential": (
        nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.Sequential(nn.ReLU(), nn.Linear(5, 4))), nn.Tanh()),
        (6,),
    ),
    "buffers_and_params": (WithBuffer(), (3, 2, 4)),
    "functional_acts": (
        Fn(lambda m, x: torch.relu(x) + F.relu(-x) * torch.sigmoid(x) - torch.tanh(x) + F.leaky_relu(x, 0.3)),
        (3, 4),
    ),
    "tensor_methods": (Fn(lambda m, x: x.relu() - x.sigmoid() * x.tanh()), (3, 4)),
    "add_sub_mul_constants": (Fn(lambda m, x: 2.0 * (x + 1) - 3 - (1.5 - x) / 4 + x * torch.ones(4)), (3, 4)),
    "operator_two_values": (Fn(lambda m, x: operator.mul(x, torch.relu(x)) + x - torch.tanh(x)), (3, 4)),
    "broadcast_two_values": (Fn(lambda m, x: x * x.sum(dim=1, keepdim=True) - x.mean(2, keepdim=True)), (3, 4)),
    "torch_add_alpha": (Fn(lambda m, x: torch.add(x, torch.relu(x), alpha=-2.0) + torch.sub(x, 1.0)), (3, 4)),
    "flatten_function_and_method": (Fn(lambda m, x: torch.flatten(x, 1) + x.flatten(1).relu()), (2, 3, 4)),
    "view_reshape": (
        Fn(lambda m, x: x.view(x.size(0), -1) + x.reshape(-1, 24) + x.view(-1, 2, 12).flatten(1)),
        (2, 3, 4),
    ),
    "shape_attribute": (Fn(lambda m, x: x.reshape(x.shape[0], x.shape[1] * x.shape[2], -1)), (2, 3, 4)),
    "cat": (Fn(lambda m, x: torch.cat([x, torch.relu(x), x * 2], dim=1)), (2, 3)),
    "cat_negative_dim": (Fn(lambda m, x: torch.cat((x, -x), -1)), (2, 3)),
    "permute_transpose": (
        Fn(lambda m, x: x.permute(0, 3, 1, 2).transpose(1, 3) + torch.transpose(x, 1, 2).permute([0, 1, 2, 3])),
        (2, 3, 4),
    ),
    "getitem_slices": (Fn(lambda m, x: x[:, 1:, ::2] + x[:, :-1, 1::2]), (3, 4)),
    "getitem_int_none_ellipsis": (
        Fn(lambda m, x: x[:, 0, None] * x[..., -1].unsqueeze(-1).sum(1, keepdim=True)),
        (3, 4),
    ),
    "squeeze_unsqueeze": (Fn(lambda m, x: x.unsqueeze(1).squeeze(1).unsqueeze(-1).squeeze()), (3, 4)),
    "clamp": (Fn(lambda m, x: torch.clamp(x, min=-0.5) + x.clamp(max=0.2) + x.clip(-0.1, 0.3)), (3, 4)),
    "hardtanh_relu6_functional": (Fn(lambda m, x: F.hardtanh(x, -0.2, 0.4) + F.relu6(x * 5)), (3, 4)),
    "functional_layers": (
        Fn(
            lambda m, x: F.avg_pool2d(F.max_pool2d(F.conv2d(x, m.c.weight, m.c.bias, padding=1), 2), 2, stride=1),
            c=nn.Conv2d(2, 3, 3),
        ),
        (2, 6, 6),
    ),
    "functional_linear_matmul": (
        Fn(lambda m, x: F.linear(x, m.l.weight, m.l.bias) + torch.matmul(x, m.l.weight.T) @ m.v, l=nn.Linear(4, 4)),
        (4,),
    ),
    "neg": (Fn(lambda m, x: -x + torch.neg(x.relu())), (3,)),
}
MODULES["functional_linear_matmul"][0].register_buffer("v", torch.randn(4, 4))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_matches(name):
    torch.manual_seed(4)
    module, shape = MODULES[name]
    module = copy.deepcopy(module)
    randomize_bn(module, torch.Generator().manual_seed(5))
    assert_imports(module, shape, scale=2.0)


def test_clip_bounds_exact():
    g = from_torch(nn.Hardtanh(-1.0, 2.0), (3,))
    x = torch.tensor([[-5.0, 0.3, 9.0]], dtype=torch.float64)
    y = g(x)
    assert y[0, 0] == -1.0 and y[0, 2] == 2.0 and abs(y[0, 1] - 0.3) < 1e-15


# -- errors ---------------------------------------------------------------------------------------


def test_unsupported_module():
    m = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    with pytest.raises(UnsupportedError) as e:
        from_torch(m, (4,))
    msg = str(e.value)
    assert "Softmax" in msg and "'1'" in msg and "Linear" in msg and "Conv2d" in msg


def test_unsupported_function_and_method():
    with pytest.raises(UnsupportedError, match=r"torch\.exp"):
        from_torch(Fn(lambda m, x: torch.exp(x)), (3,))
    with pytest.raises(UnsupportedError, match=r"\.softmax\(\)"):
        from_torch(Fn(lambda m, x: x.softmax(-1)), (3,))
    with pytest.raises(UnsupportedError, match="F.softmax"):
        from_torch(Fn(lambda m, x: F.softmax(x, -1)), (3,))


def test_unsupported_structures():
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(UnsupportedError, match="more than one input"):
        from_torch(TwoInputs(), (3,))

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedError, match="trace"):
        from_torch(Branchy(), (3,))

    with pytest.raises(UnsupportedError, match="batch"):
        from_torch(Fn(lambda m, x: x.flatten()), (3, 2))
    with pytest.raises(UnsupportedError, match="batch"):
        from_torch(Fn(lambda m, x: torch.cat([x, x], 0)), (3,))
    with pytest.raises(UnsupportedError, match="ceil_mode"):
        from_torch(nn.MaxPool2d(2, ceil_mode=True), (1, 5, 5))
    with pytest.raises(UnsupportedError, match="padding_mode"):
        from_torch(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (1, 5, 5))
    with pytest.raises(UnsupportedError, match="several values"):
        from_torch(Fn(lambda m, x: (x, x)), (3,))
    with pytest.raises(UnsupportedError, match="two network values"):
        from_torch(Fn(lambda m, x: x @ x.transpose(1, 2)), (3, 3))


def test_optional_second_argument_uses_default():
    class Opt(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(3, 2)

        def forward(self, x, scale: float = 2.0):
            return self.l(x) * scale

    assert_imports(Opt(), (3,))


def test_graph_has_no_dead_nodes_and_shapes_are_per_sample():
    g = from_torch(SmallCNN().eval(), (2, 8, 8))
    assert g.output_shape == (5,)
    assert math.prod(g.input_shape) == g.n_inputs == 128
