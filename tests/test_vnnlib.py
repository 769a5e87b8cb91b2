"""VNN-LIB parsing: real VNN-COMP files, hand-written examples, random round trips and error positions."""

from __future__ import annotations

import csv
import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veracity.spec import (
    Box,
    Case,
    Region,
    Spec,
    VnnlibError,
    load_vnnlib,
    parse_vnnlib,
    robustness_regions,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
BENCHMARKS = SHARED / "benchmarks"
FOLDERS = sorted(p.parent.name for p in BENCHMARKS.glob("*/vnnlib"))


def benchmark(name: str) -> Path:
    folder = BENCHMARKS / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    return folder


def assert_same_spec(a: Spec, b: Spec) -> None:
    assert (a.n_inputs, a.n_outputs, len(a.cases)) == (b.n_inputs, b.n_outputs, len(b.cases))
    for ca, cb in zip(a.cases, b.cases, strict=True):
        np.testing.assert_array_equal(ca.box.lower, cb.box.lower)
        np.testing.assert_array_equal(ca.box.upper, cb.box.upper)
        assert len(ca.regions) == len(cb.regions)
        for ra, rb in zip(ca.regions, cb.regions, strict=True):
            assert ra.A.shape == rb.A.shape
            np.testing.assert_array_equal(ra.A, rb.A)
            np.testing.assert_array_equal(ra.b, rb.b)


def declare(n_in: int, n_out: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(n_out)
    )


# --------------------------------------------------------------------------------------------------------
# Real VNN-COMP files
# --------------------------------------------------------------------------------------------------------


def network_sizes(path: Path) -> tuple[int, int]:
    """Total static sizes of an ONNX model's inputs and outputs (dynamic dimensions count as 1)."""
    model = onnx.load_from_string(gzip.decompress(path.read_bytes()))
    weights = {t.name for t in model.graph.initializer}

    def size(values):
        dims = [d.dim_value for v in values if v.name not in weights for d in v.type.tensor_type.shape.dim]
        return int(np.prod([max(d, 1) for d in dims]))

    return size(model.graph.input), size(model.graph.output)


@pytest.mark.parametrize("name", FOLDERS or [pytest.param("", marks=pytest.mark.skip("no shared/"))])
def test_every_benchmark_file_parses_and_fits_its_networks(name):
    """Every vnnlib/*.vnnlib.gz parses (named without .gz, as instances.csv does) to a spec with cases and
    regions, and each instance's spec has as many inputs and outputs as its network."""
    folder = benchmark(name)
    names = [f"vnnlib/{p.name.removesuffix('.gz')}" for p in sorted(folder.glob("vnnlib/*.vnnlib.gz"))]
    specs = {name: load_vnnlib(folder / name) for name in names}
    assert specs
    assert all(spec.cases and all(c.regions for c in spec.cases) for spec in specs.values())
    sizes = {}
    with open(folder / "instances.csv") as f:
        for onnx_name, vnnlib_name, _ in csv.reader(f):
            if onnx_name not in sizes:
                sizes[onnx_name] = network_sizes(folder / f"{onnx_name}.gz")
            assert (specs[vnnlib_name].n_inputs, specs[vnnlib_name].n_outputs) == sizes[onnx_name]


def acasxu(prop: int) -> Spec:
    return load_vnnlib(benchmark("acasxu") / "vnnlib" / f"prop_{prop}.vnnlib")


@pytest.mark.parametrize("prop", [1, 2, 3, 4])
def test_acasxu_properties_1_to_4_are_one_box_and_one_region(prop):
    spec = acasxu(prop)
    assert (spec.n_inputs, spec.n_outputs, len(spec.cases)) == (5, 5, 1)
    assert len(spec.cases[0].regions) == 1


def test_acasxu_property_1_values_are_exact():
    """Bounds equal float() of the file's tokens; (>= Y_0 c) becomes the row -y_0 <= -c."""
    case = acasxu(1).cases[0]
    np.testing.assert_array_equal(case.box.lower, [0.6, -0.5, -0.5, 0.45, -0.5])
    np.testing.assert_array_equal(case.box.upper, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    (region,) = case.regions
    np.testing.assert_array_equal(region.A, [[-1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(region.b, [-3.991125645861615])


def test_acasxu_property_6_is_two_input_boxes_with_four_regions_each():
    """prop_6 asserts an `or` of two input boxes (X_1 positive or negative) and an `or` of four outputs."""
    spec = acasxu(6)
    assert len(spec.cases) == 2
    np.testing.assert_array_equal([c.box.lower[1] for c in spec.cases], [0.11140846, -0.499999896])
    np.testing.assert_array_equal([c.box.upper[1] for c in spec.cases], [0.499999896, -0.11140846])
    for case in spec.cases:
        # (<= Y_j Y_0) for j = 1..4: the row y_j - y_0 <= 0
        expected = [np.eye(5)[j] - np.eye(5)[0] for j in range(1, 5)]
        assert [r.A.shape for r in case.regions] == [(1, 5)] * 4
        np.testing.assert_array_equal([r.A[0] for r in case.regions], expected)
        np.testing.assert_array_equal([r.b[0] for r in case.regions], [0.0] * 4)


def test_acasxu_property_7_is_one_box_with_two_three_row_regions():
    """prop_7: Y_3 or Y_4 is minimal, i.e. two regions of three rows each."""
    (case,) = acasxu(7).cases
    assert [r.A.shape for r in case.regions] == [(3, 5), (3, 5)]
    for region, k in zip(case.regions, (3, 4), strict=True):
        np.testing.assert_array_equal(region.A, [np.eye(5)[k] - np.eye(5)[j] for j in range(3)])


def mnist_test_set() -> tuple[np.ndarray, np.ndarray]:
    folder = SHARED / "data" / "mnist"
    if not folder.is_dir():
        pytest.skip("no MNIST in shared/data")
    images = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
    labels = gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:]
    return np.frombuffer(images, np.uint8).reshape(-1, 784) / 255.0, np.frombuffer(labels, np.uint8)


def robustness_label(spec: Spec) -> int:
    """The label protected by a robustness spec: 9 regions, each a single row y_label - y_j <= 0."""
    (case,) = spec.cases
    assert [r.A.shape for r in case.regions] == [(1, 10)] * 9
    label = int(np.argmax(case.regions[0].A[0]))
    for got, want in zip(case.regions, robustness_regions(label, 10), strict=True):
        np.testing.assert_array_equal(got.A, want.A)
        np.testing.assert_array_equal(got.b, want.b)
    return label


def test_mnist_fc_boxes_are_clipped_balls_around_mnist_test_images():
    """Each box is [clip(x - eps), clip(x + eps)] (clip to [0, 1], eps from the file name) for an MNIST test
    image x of the label named in the file's comment and protected by its 9 regions; where the clip leaves
    the box alone its centre is the image. Tolerance 1e-7: the files hold float32 values."""
    images, labels = mnist_test_set()
    for path in sorted(benchmark("mnist_fc").glob("vnnlib/*.vnnlib.gz")):
        spec = load_vnnlib(path)
        assert spec.n_inputs == 784
        label = robustness_label(spec)
        assert f"label: {label}." in gzip.decompress(path.read_bytes()).decode()
        eps = float(re.search(r"_([\d.]+)\.vnnlib", path.name)[1])
        box = spec.cases[0].box
        nearest = np.argmin(np.abs(images - box.center).max(axis=1))
        image = images[nearest]
        assert labels[nearest] == label
        np.testing.assert_allclose(box.lower, np.clip(image - eps, 0, 1), atol=1e-7, rtol=0)
        np.testing.assert_allclose(box.upper, np.clip(image + eps, 0, 1), atol=1e-7, rtol=0)
        unclipped = (box.lower > 0) & (box.upper < 1)
        np.testing.assert_allclose(box.center[unclipped], image[unclipped], atol=1e-7, rtol=0)


def test_oval21_boxes_are_normalised_clipped_balls_around_the_named_cifar_images():
    """oval21 names the CIFAR-10 test image n and eps; the box is (clip(x +- eps, 0, 1) - mean) / std with
    mean (0.485, 0.456, 0.406), std 0.225 per channel, so its centre is the normalised image wherever the
    clip leaves it alone; the 9 regions protect that image's label."""
    batch = SHARED / "data" / "cifar10" / "cifar-10-batches-py" / "test_batch"
    if not batch.is_file():
        pytest.skip("no CIFAR-10 in shared/data")
    with open(batch, "rb") as f:
        data = pickle.load(f, encoding="bytes")
    mean = np.repeat([0.485, 0.456, 0.406], 1024)
    for path in sorted(benchmark("oval21").glob("vnnlib/*.vnnlib.gz")):
        spec = load_vnnlib(path)
        assert spec.n_inputs == 3072
        n = int(re.search(r"img(\d+)", path.name)[1])
        eps = float(re.search(r"eps([\d.]+)\.vnnlib", path.name)[1])
        assert robustness_label(spec) == data[b"labels"][n]
        image = data[b"data"][n] / 255.0
        box = spec.cases[0].box
        np.testing.assert_allclose(box.lower, (np.clip(image - eps, 0, 1) - mean) / 0.225, atol=1e-6, rtol=0)
        np.testing.assert_allclose(box.upper, (np.clip(image + eps, 0, 1) - mean) / 0.225, atol=1e-6, rtol=0)
        unclipped = (image - eps > 0) & (image + eps < 1)
        np.testing.assert_allclose(box.center[unclipped], ((image - mean) / 0.225)[unclipped], atol=1e-6)


# --------------------------------------------------------------------------------------------------------
# Hand-written examples
# --------------------------------------------------------------------------------------------------------

UNIT_BOX = "(assert (>= X_0 0)) (assert (<= X_0 1))\n"


def only_case(text: str, n_in: int = 1, n_out: int = 3) -> Case:
    (case,) = parse_vnnlib(declare(n_in, n_out) + text).cases
    return case


def regions_of(case: Case) -> list[tuple[list, list]]:
    return [(r.A.tolist(), r.b.tolist()) for r in case.regions]


def test_nested_and_or_expand_to_one_region_per_dnf_term():
    """((a or (b and (c or d))) and e) gives the regions e&a, e&b&c, e&b&d: within a conjunction, atoms
    shared by all its terms come first."""
    case = only_case(
        UNIT_BOX + "(assert (and (or (<= Y_0 1) (and (<= Y_1 2) (or (<= Y_2 3) (>= Y_2 4)))) (<= Y_0 Y_1)))"
    )
    e = [1, -1, 0]
    assert regions_of(case) == [
        ([e, [1, 0, 0]], [0, 1]),
        ([e, [0, 1, 0], [0, 0, 1]], [0, 2, 3]),
        ([e, [0, 1, 0], [0, 0, -1]], [0, 2, -4]),
    ]


def test_strict_comparisons_read_as_non_strict():
    case = only_case("(assert (> X_0 -1)) (assert (< X_0 1)) (assert (> Y_0 3)) (assert (< 2 Y_1))")
    assert (case.box.lower.tolist(), case.box.upper.tolist()) == ([-1], [1])
    assert regions_of(case) == [([[-1, 0, 0], [0, -1, 0]], [-3, -2])]


def test_linear_arithmetic():
    """-, unary -, *, + with constants on either side all fold into one row a . y <= b."""
    case = only_case(
        UNIT_BOX
        + "(assert (<= (- Y_0 Y_1) 0.5))"
        + "(assert (>= (* 2 Y_0) (* Y_1 3)))"
        + "(assert (<= (+ (- Y_2) (* 2 3 Y_0) 1) (- 4 Y_1 Y_2)))"
    )
    assert regions_of(case) == [([[1, -1, 0], [-2, 3, 0], [6, 1, 0]], [0.5, 0, 3])]


def test_comments_and_layout_do_not_matter():
    """Comments anywhere and atoms broken over lines parse the same as the compact form."""
    compact = declare(1, 2) + UNIT_BOX + "(assert (or (<= Y_0 Y_1) (>= Y_0 -2)))"
    spread = (
        "; header\n(declare-const X_0 Real) ; trailing\n(declare-const Y_0 Real)(declare-const Y_1 Real)\n"
        "(assert (>= X_0 ; inside\n 0))\n(assert\n(<=\tX_0\n1))\n"
        "(assert (or (<= Y_0 ; again\n Y_1) (>= Y_0\n-2)))\n; last line without newline"
    )
    assert_same_spec(parse_vnnlib(spread), parse_vnnlib(compact))


@pytest.mark.parametrize(
    "token, value",
    [("1e-3", 1e-3), ("-2.5E+2", -250.0), (".5", 0.5), ("3.", 3.0), ("-0.5", -0.5), ("7", 7.0)],
)
def test_numbers_parse_as_python_floats(token, value):
    case = only_case(f"(assert (>= X_0 {token})) (assert (<= X_0 1000))", n_out=0)
    assert case.box.lower[0] == value


def test_input_disjunction_gives_one_case_per_box_with_unconstrained_outputs():
    """Without output constraints the bad region is all of R^n: a Region with no rows."""
    spec = parse_vnnlib(
        declare(1, 2) + "(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3))))"
    )
    assert [(c.box.lower.tolist(), c.box.upper.tolist()) for c in spec.cases] == [([0], [1]), ([2], [3])]
    for case in spec.cases:
        (region,) = case.regions
        assert region.A.shape == (0, 2) and region.b.shape == (0,)
    assert spec.violated_by([2.5], [1e9, -1e9])
    assert not spec.violated_by([1.5], [0, 0])


def test_terms_group_by_identical_box_in_order_of_first_appearance():
    spec = parse_vnnlib(
        declare(1, 1)
        + "(assert (or (and (>= X_0 2) (<= X_0 3) (<= Y_0 1))"
        + "            (and (>= X_0 0) (<= X_0 1) (<= Y_0 2))"
        + "            (and (>= X_0 2) (<= X_0 3) (<= Y_0 3))))"
    )
    assert [c.box.lower[0] for c in spec.cases] == [2, 0]
    assert [[r.b[0] for r in c.regions] for c in spec.cases] == [[1, 3], [2]]


def test_unsatisfiable_terms_are_dropped():
    """Terms with an empty box or a false constant atom cannot be violated; true constant atoms vanish."""
    spec = parse_vnnlib(
        declare(1, 1)
        + UNIT_BOX
        + "(assert (or (and (>= X_0 2) (<= Y_0 1)) (and (<= 1 0) (<= Y_0 2)) (and (<= 0 1) (<= Y_0 3))))"
    )
    (case,) = spec.cases
    assert regions_of(case) == [([[1]], [3])]
    assert parse_vnnlib(declare(1, 1) + UNIT_BOX + "(assert (>= X_0 2))").cases == ()


def test_declarations_in_any_order_and_after_use():
    text = "(declare-const X_1 Real)(assert (<= X_0 1))(declare-const X_0 Real)(assert (>= X_0 0))"
    text += "(assert (and (>= X_1 2) (<= X_1 3)))"
    spec = parse_vnnlib(text)
    assert (spec.n_inputs, spec.n_outputs) == (2, 0)
    assert spec.cases[0].box.lower.tolist() == [0, 2]


def test_load_reads_gzip_and_resolves_a_missing_gz_suffix(tmp_path):
    text = declare(1, 1) + UNIT_BOX + "(assert (<= Y_0 0))"
    (tmp_path / "plain.vnnlib").write_text(text)
    (tmp_path / "packed.vnnlib.gz").write_bytes(gzip.compress(text.encode()))
    expected = parse_vnnlib(text)
    for name in ("plain.vnnlib", "packed.vnnlib.gz", "packed.vnnlib"):
        assert_same_spec(load_vnnlib(tmp_path / name), expected)
    with pytest.raises(FileNotFoundError):
        load_vnnlib(tmp_path / "absent.vnnlib")
    with pytest.raises(VnnlibError, match=r"packed\.vnnlib\.gz:1:16: file declares 1 inputs but 2 were"):
        load_vnnlib(str(tmp_path / "packed.vnnlib"), n_inputs=2)


def test_declared_sizes_must_match_the_given_ones():
    text = declare(1, 2) + UNIT_BOX
    assert parse_vnnlib(text, n_inputs=1, n_outputs=2).n_outputs == 2
    with pytest.raises(VnnlibError, match="declares 2 outputs but 3 were expected"):
        parse_vnnlib(text, n_outputs=3)


def test_dnf_blow_up_is_refused():
    """Six 10-way disjunctions would give 10^6 terms."""
    ten = "(assert (or " + " ".join(f"(<= Y_0 {k})" for k in range(10)) + "))\n"
    parse_vnnlib(declare(1, 1) + UNIT_BOX + ten * 2)
    with pytest.raises(VnnlibError, match="exceeds 100000 terms"):
        parse_vnnlib(declare(1, 1) + UNIT_BOX + ten * 6)


# --------------------------------------------------------------------------------------------------------
# Random specs: write as VNN-LIB, parse back
# --------------------------------------------------------------------------------------------------------

# Multiples of 1/4 with small integer coefficients keep every sum exact in float64, so the parser,
# core.Spec and the evaluator below cannot disagree through rounding.
QUARTERS = st.integers(-40, 40).map(lambda k: k / 4)


@st.composite
def specs(draw, values=QUARTERS):
    n_in, n_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    cases = []
    for _ in range(draw(st.integers(1, 3))):
        lower = np.array([draw(values) for _ in range(n_in)])
        upper = lower + np.array([draw(st.sampled_from([0.0, 0.25, 1.0, 5.0])) for _ in range(n_in)])
        regions = []
        for _ in range(draw(st.integers(1, 3))):
            rows = [
                draw(st.lists(st.integers(-3, 3), min_size=n_out, max_size=n_out).filter(any))
                for _ in range(draw(st.integers(0, 3)))
            ]
            rhs = [draw(values) for _ in rows]
            regions.append(Region(np.array(rows, dtype=float).reshape(-1, n_out), rhs))
        cases.append(Case(Box(lower, upper), regions))
    return Spec(cases, n_in, n_out)


def to_vnnlib(spec: Spec, draw) -> str:
    """VNN-LIB text for ``spec``, with layout and comparison forms chosen by ``draw``."""
    sep = draw(st.sampled_from([" ", "\n  ", " ; note\n"]))

    def row(a, b) -> str:
        lhs = f"(+{sep}" + sep.join(f"(* {float(c)!r} Y_{j})" for j, c in enumerate(a)) + ")"
        op = draw(st.sampled_from(["<=", "<", ">=", ">"]))
        return f"({op}{sep}{lhs}{sep}{float(b)!r})" if op[0] == "<" else f"({op}{sep}{float(b)!r}{sep}{lhs})"

    def bounds(box) -> list[str]:
        return [
            f"({op} X_{i} {float(v)!r})"
            for op, vs in ((">=", box.lower), ("<=", box.upper))
            for i, v in enumerate(vs)
        ]

    def conj(atoms) -> str:
        return f"(and{sep}" + sep.join(atoms) + ")"

    text = declare(spec.n_inputs, spec.n_outputs)
    if len(spec.cases) == 1 and draw(st.booleans()):  # the usual layout: input bounds as top-level asserts
        text += "".join(f"(assert {atom})\n" for atom in bounds(spec.cases[0].box))
        terms = [conj([row(a, b) for a, b in zip(r.A, r.b, strict=True)]) for r in spec.cases[0].regions]
    else:
        terms = [
            conj(bounds(c.box) + [row(a, b) for a, b in zip(r.A, r.b, strict=True)])
            for c in spec.cases
            for r in c.regions
        ]
    return text + f"(assert (or{sep}" + sep.join(terms) + "))\n"


def merged(spec: Spec) -> list[tuple[Box, list[Region]]]:
    """The cases the parser should return: cases with identical boxes merged, in first-appearance order."""
    groups: dict[tuple, tuple[Box, list[Region]]] = {}
    for c in spec.cases:
        key = (tuple(c.box.lower), tuple(c.box.upper))
        groups.setdefault(key, (c.box, []))[1].extend(c.regions)
    return list(groups.values())


@given(data=st.data(), spec=specs(values=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)))
@settings(max_examples=150, deadline=None)
def test_round_trip_gives_identical_boxes_and_regions(data, spec):
    """Bounds and right-hand sides are arbitrary floats: repr() then float() must reproduce them exactly."""
    expected = Spec([Case(box, regions) for box, regions in merged(spec)], spec.n_inputs, spec.n_outputs)
    assert_same_spec(parse_vnnlib(to_vnnlib(spec, data.draw)), expected)


def evaluate(text: str, x, y) -> bool:
    """Directly evaluate the VNN-LIB formula at (x, y): the conjunction of its asserts (strict as <=)."""
    tokens = re.findall(r"[()]|[^\s()]+", re.sub(r";[^\n]*", " ", text))
    stack: list[list] = [[]]
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)

    def value(e):
        if isinstance(e, str):
            return x[int(e[2:])] if e[0] == "X" else y[int(e[2:])] if e[0] == "Y" else float(e)
        args = [value(a) for a in e[1:]]
        if e[0] == "+":
            return sum(args)
        if e[0] == "*":
            return float(np.prod(args))
        return -args[0] if len(args) == 1 else args[0] - sum(args[1:])

    def holds(e):
        op, args = e[0], e[1:]
        if op == "and":
            return all(holds(a) for a in args)
        if op == "or":
            return any(holds(a) for a in args)
        a, b = value(args[0]), value(args[1])
        return a <= b if op[0] == "<" else a >= b

    return all(holds(e[1]) for e in stack[0] if e[0] == "assert")


@given(data=st.data(), spec=specs())
@settings(max_examples=150, deadline=None)
def test_parsed_spec_is_violated_exactly_where_the_formula_holds(data, spec):
    text = to_vnnlib(spec, data.draw)
    parsed = parse_vnnlib(text)
    for _ in range(10):
        x = [data.draw(QUARTERS) for _ in range(spec.n_inputs)]
        y = [data.draw(QUARTERS) for _ in range(spec.n_outputs)]
        assert parsed.violated_by(x, y) == evaluate(text, x, y) == spec.violated_by(x, y)


# --------------------------------------------------------------------------------------------------------
# Malformed files: "@" marks where the error must be reported, and is removed before parsing
# --------------------------------------------------------------------------------------------------------

HEADER = declare(2, 2) + "(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (>= X_1 0)) (assert (<= X_1 1))\n"

MALFORMED = {
    "unclosed": (HEADER + "@(assert (<= Y_0 1)\n(assert (<= Y_1 1))\n", "'(' is never closed"),
    "unclosed deep": (HEADER + "@(assert (or (<= Y_0 1) (and (<= Y_1 1))\n", "'(' is never closed"),
    "extra close": (HEADER + "(assert (<= Y_0 1))@)\n", "unexpected ')'"),
    "unknown operator": (HEADER + "(assert (@lessequal Y_0 1))", "unknown operator 'lessequal'"),
    "unknown term operator": (HEADER + "(assert (<= (@/ Y_0 2) 1))", "unknown operator '/'"),
    "undeclared": (HEADER + "(assert (<= @X_9 1))", "undeclared variable 'X_9'"),
    "undeclared in term": (HEADER + "(assert (<= (+ 1 @Y_5) 1))", "undeclared variable 'Y_5'"),
    "bad number": (HEADER + "(assert (<= Y_0 @1.2.3))", "bad number '1.2.3'"),
    "bad number in term": (HEADER + "(assert (<= (* @2x Y_0) 1))", "bad number '2x'"),
    "overflowing number": (HEADER + "(assert (<= Y_0 @1e999))", "bad number '1e999'"),
    "unknown symbol": (HEADER + "(assert (<= Y_0 @inf))", "unknown symbol 'inf'"),
    "non-linear": (HEADER + "(assert (<= (* X_0 @X_1) 1))", "non-linear term"),
    "non-linear nested": (HEADER + "(assert (<= (* (+ Y_0 1) 2 @(- Y_1)) 1))", "non-linear term"),
    "type": ("(declare-const X_0 @Int)", "unsupported type 'Int'"),
    "bad name": ("(declare-const @Z Real)", "X_<i> or Y_<j>"),
    "declared twice": (HEADER + "(declare-const @X_1 Real)", "X_1 declared twice"),
    "gap in inputs": ("(declare-const X_0 Real)\n(declare-const @X_2 Real)", "X_2 declared but X_1 is not"),
    "top level": (HEADER + "@(check-sat)", "expected (declare-const ...) or (assert ...)"),
    "top level atom": (HEADER + "@(<= Y_0 1)", "expected (declare-const ...) or (assert ...)"),
    "assert arity": (HEADER + "@(assert (<= Y_0 1) (<= Y_1 1))", "assert takes one expression, got 2"),
    "comparison arity": (HEADER + "(assert @(<= Y_0 1 2))", "'<=' takes 2 arguments, got 3"),
    "term as constraint": (HEADER + "(assert (@+ Y_0 1))", "expected a constraint"),
    "constraint as term": (HEADER + "(assert (<= (+ @(<= Y_0 1) 1) 1))", "expected a term"),
    "no assertions": ("@; only a comment\n" + declare(1, 1), "no assertions"),
    "general input constraint": (HEADER + "(assert @(<= X_1 X_0))", "constraint over X_1, X_0"),
    "mixed constraint": (HEADER + "(assert @(<= (+ X_0 Y_0) 1))", "mixes inputs and outputs"),
    "missing lower bound": (
        "(declare-const @X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))",
        "X_0 has no lower bound",
    ),
    "missing bound in one disjunct": (
        "(declare-const @X_0 Real)(assert (or (and (>= X_0 0) (<= X_0 1)) (>= X_0 2)))",
        "X_0 has no upper bound in disjunct 2 of 2",
    ),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_file_is_reported_at_the_offending_token(name):
    marked, message = MALFORMED[name]
    offset = marked.index("@")
    line = marked.count("\n", 0, offset) + 1
    col = offset - marked.rfind("\n", 0, offset)
    with pytest.raises(VnnlibError) as info:
        parse_vnnlib(marked.replace("@", ""), filename="bad.vnnlib")
    assert str(info.value).startswith(f"bad.vnnlib:{line}:{col}: ")
    assert message in str(info.value)
    assert (info.value.line, info.value.col) == (line, col)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
