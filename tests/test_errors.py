"""Bad input gets a clear ValueError or TypeError that names the argument, from the API and from the CLI."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import framepress
from framepress import cli, registry

METHODS = framepress.methods("pre-llm")


def video(T=2, H=4, W=5, C=3, dtype=torch.float32):
    return torch.randn(T, H, W, C, generator=torch.Generator().manual_seed(0)).to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# the features tensor x (checked before any method runs, so every method gives the same error)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("shape", [(4, 5, 3), (2, 4, 5, 3, 1), (12,), ()])
def test_wrong_rank(name, shape):
    with pytest.raises(ValueError, match=r"^x must have shape \[T, H, W, C\] \(4 dims\), got \d+ dims"):
        framepress.compress(torch.randn(shape), name, 0.5)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("shape", [(0, 4, 5, 3), (2, 0, 5, 3), (2, 4, 0, 3), (2, 4, 5, 0)])
def test_empty(name, shape):
    with pytest.raises(ValueError, match=r"^x is empty"):
        framepress.compress(torch.empty(shape), name, 0.5)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf(name, dtype, bad):
    x = video(dtype=dtype)
    x[1, 2, 3, 1] = bad
    with pytest.raises(ValueError, match=r"^x contains NaN or inf"):
        framepress.compress(x, name, 0.5)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_non_floating_dtype(name, dtype):
    x = torch.ones(2, 4, 5, 3, dtype=dtype)
    with pytest.raises(TypeError, match=r"^x must be a floating-point tensor"):
        framepress.compress(x, name, 0.5)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize(
    "x, type_name",
    [(video().tolist(), "list"), (video().numpy(), "ndarray"), (None, "NoneType"), (3.0, "float")],
)
def test_not_a_tensor(name, x, type_name):
    with pytest.raises(TypeError, match=rf"^x must be a torch\.Tensor .*got {type_name}"):
        framepress.compress(x, name, 0.5)


# ---------------------------------------------------------------------------------------------------------------
# retention
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("retention", [0, 0.0, -0.1, -1, 1.0000001, 1.5, 2, math.nan, math.inf, -math.inf])
def test_retention_out_of_range(name, retention):
    with pytest.raises(ValueError, match=r"^retention must be in \(0, 1\]"):
        framepress.compress(video(), name, retention)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("retention", ["0.5", True, False, [0.5], torch.tensor(0.5), 1j])
def test_retention_not_a_number(name, retention):
    with pytest.raises(TypeError, match=r"^retention must be a number"):
        framepress.compress(video(), name, retention)


# ---------------------------------------------------------------------------------------------------------------
# method names and parameters
# ---------------------------------------------------------------------------------------------------------------


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; known methods: ") as info:
        framepress.compress(video(), "nope", 0.5)
    for name in METHODS:
        assert name in str(info.value)


@pytest.mark.parametrize("method", [None, 3, ["sttm"]])
def test_method_not_a_name(method):
    with pytest.raises(TypeError, match=r"^method must be a method name"):
        framepress.compress(video(), method, 0.5)


@pytest.mark.parametrize("name", METHODS)
def test_unknown_parameter_is_named_and_accepted_ones_listed(name):
    with pytest.raises(ValueError, match=rf"unknown parameter\(s\) bogus for method '{name}'; it accepts: ") as info:
        framepress.compress(video(), name, 0.5, bogus=1)
    accepted = str(info.value).split("it accepts: ", 1)[1]
    for param in registry.get(name).params:
        assert param in accepted


def test_several_unknown_parameters_are_all_named():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) alpha, beta for method 'pool'"):
        framepress.compress(video(), "pool", 0.5, beta=1, alpha=2)


# ---------------------------------------------------------------------------------------------------------------
# sttm
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, error, pattern",
    [
        ({"tau_s": 5}, ValueError, r"^tau_s must be a finite number in \[-1\.0, 2\.0\], got 5"),
        ({"tau_s": -1.5}, ValueError, r"^tau_s must be a finite number"),
        ({"tau_s": math.nan}, ValueError, r"^tau_s must be a finite number"),
        ({"tau_s": math.inf}, ValueError, r"^tau_s must be a finite number"),
        ({"tau_t": math.nan}, ValueError, r"^tau_t must be a finite number in \[-2\.0, 2\.0\], got nan"),
        ({"tau_t": 3.0}, ValueError, r"^tau_t must be a finite number"),
        ({"tau_t": -math.inf}, ValueError, r"^tau_t must be a finite number"),
        ({"tau_s": "0.8"}, TypeError, r"^tau_s must be a number, got str"),
        ({"tau_t": True}, TypeError, r"^tau_t must be a number, got bool"),
        ({"tau_s": [0.8]}, TypeError, r"^tau_s must be a number"),
        ({"variant": "fastest"}, ValueError, r"^variant must be one of 'fast', 'slow', 'best'; got 'fastest'"),
        ({"variant": None}, ValueError, r"^variant must be one of"),
        ({"grouping": "components"}, ValueError, r"^grouping must be one of 'official', 'exact'; got 'components'"),
        ({"invalid_slots": "zero"}, ValueError, r"^invalid_slots must be one of 'top_left', 'ignore'; got 'zero'"),
        ({"root_level": 1.0}, TypeError, r"^root_level must be an int, got float"),
        ({"root_level": "1"}, TypeError, r"^root_level must be an int, got str"),
        ({"root_level": True}, TypeError, r"^root_level must be an int, got bool"),
        ({"root_level": -99}, ValueError, r"^root_level must be >= -\d+ for a 4x5 grid, got -99"),
    ],
)
@pytest.mark.parametrize("retention", [None, 0.5])
def test_sttm_parameters(params, error, pattern, retention):
    with pytest.raises(error, match=pattern):
        framepress.compress(video(), "sttm", retention, **params)


def test_sttm_retention_and_both_thresholds():
    with pytest.raises(ValueError, match=r"retention .*tau_s .*tau_t"):
        framepress.compress(video(), "sttm", 0.5, tau_s=0.8, tau_t=0.6)


def test_sttm_retention_below_its_minimum_names_retention():
    x = video(T=1, H=8, W=8)
    with pytest.raises(ValueError, match=r"^retention asks for 1 tokens, but sttm keeps at least \d+"):
        framepress.compress(x, "sttm", 1e-9)


# ---------------------------------------------------------------------------------------------------------------
# pool
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retention, params, error, pattern",
    [
        (None, {"stride": 2, "size": (2, 2)}, ValueError, r"retention, stride or size"),
        (0.5, {"stride": 2}, ValueError, r"retention, stride or size"),
        (0.5, {"size": (2, 2)}, ValueError, r"retention, stride or size"),
        (None, {"size": 3}, TypeError, r"^size must be a pair \(h, w\), got 3"),
        (None, {"size": (2,)}, TypeError, r"^size must be a pair"),
        (None, {"size": (2, 2, 2)}, TypeError, r"^size must be a pair"),
        (None, {"size": "22"}, TypeError, r"^size must be a pair"),
        (None, {"size": (0, 2)}, ValueError, r"^size\[0\] must be in \[1, (4|None)\], got 0"),
        (None, {"size": (2, 6)}, ValueError, r"^size\[1\] must be in \[1, 5\], got 6"),
        (None, {"size": (2, -1)}, ValueError, r"^size\[1\] must be in"),
        (None, {"size": (1.5, 2)}, TypeError, r"^size\[0\] must be an int, got float"),
        (None, {"mode": "max"}, ValueError, r"^mode must be one of 'bilinear', 'average'; got 'max'"),
        (0.5, {"mode": "nearest"}, ValueError, r"^mode must be one of"),
        (None, {"stride": 0}, ValueError, r"^stride must be in \[1, None\], got 0"),
        (None, {"stride": -2}, ValueError, r"^stride must be in"),
        (None, {"stride": 2.0}, TypeError, r"^stride must be an int, got float"),
        (None, {"stride": 5, "mode": "average"}, ValueError, r"^stride=5 is larger than the 4x5 grid"),
    ],
)
def test_pool_parameters(retention, params, error, pattern):
    with pytest.raises(error, match=pattern):
        framepress.compress(video(), "pool", retention, **params)


def test_pool_retention_below_one_token_per_frame():
    with pytest.raises(ValueError, match=r"^retention asks for 1 tokens, but pool keeps at least one token per frame"):
        framepress.compress(video(T=4), "pool", 1e-9)


# ---------------------------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retention, params, error, pattern",
    [
        (None, {"num_frames": 0}, ValueError, r"^num_frames must be in \[1, (3|None)\], got 0"),
        (None, {"num_frames": 4}, ValueError, r"^num_frames must be in \[1, 3\], got 4"),
        (None, {"num_frames": -1}, ValueError, r"^num_frames must be in"),
        (None, {"num_frames": 1.0}, TypeError, r"^num_frames must be an int, got float"),
        (None, {"num_frames": True}, TypeError, r"^num_frames must be an int, got bool"),
        (0.5, {"num_frames": 1}, ValueError, r"retention or num_frames"),
        (0.01, {}, ValueError, r"^retention asks for 1 tokens, less than one 4x5 frame"),
    ],
)
def test_frames_parameters(retention, params, error, pattern):
    with pytest.raises(error, match=pattern):
        framepress.compress(video(T=3), "frames", retention, **params)


# ---------------------------------------------------------------------------------------------------------------
# random
# ---------------------------------------------------------------------------------------------------------------


def test_random_needs_retention():
    with pytest.raises(ValueError, match=r"^random needs a retention"):
        framepress.compress(video(), "random")


@pytest.mark.parametrize(
    "seed, error, pattern",
    [
        (-1, ValueError, r"^seed must be in \[0, \d+\], got -1"),
        (1.5, TypeError, r"^seed must be an int, got float"),
        ("1", TypeError, r"^seed must be an int, got str"),
        (None, TypeError, r"^seed must be an int"),
    ],
)
def test_random_seed(seed, error, pattern):
    with pytest.raises(error, match=pattern):
        framepress.compress(video(), "random", 0.5, seed=seed)


def test_random_seed_too_large_is_named():
    with pytest.raises(ValueError, match=r"seed"):
        framepress.compress(video(), "random", 0.5, seed=2**64)


# ---------------------------------------------------------------------------------------------------------------
# the command line: exit status 2, one error line on stderr, no traceback
# ---------------------------------------------------------------------------------------------------------------


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_cli_error(code, out, err, *patterns):
    assert code == 2
    assert err.startswith("framepress compress: error: "), err
    assert "Traceback" not in err and "Traceback" not in out
    for pattern in patterns:
        assert re.search(pattern, err), (pattern, err)


def test_cli_missing_features_file(tmp_path, capsys):
    missing = tmp_path / "nowhere.npy"
    code, out, err = run_cli(capsys, "compress", str(missing), "-m", "pool")
    assert_cli_error(code, out, err, r"features file not found", re.escape(str(missing)))


def test_cli_unknown_method(capsys):
    code, out, err = run_cli(capsys, "compress", "--synthetic", "2x6x6x4", "-m", "nope", "--repeat", "1")
    assert_cli_error(code, out, err, r"unknown method 'nope'", *METHODS)


def test_cli_unknown_parameter(capsys):
    code, out, err = run_cli(capsys, "compress", "--synthetic", "2x6x6x4", "-m", "pool", "-p", "bogus=3", "--repeat", "1")
    assert_cli_error(code, out, err, r"bogus")


def test_cli_unknown_parameter_for_all_methods(capsys):
    code, out, err = run_cli(capsys, "compress", "--synthetic", "2x6x6x4", "-p", "bogus=3", "--repeat", "1")
    assert_cli_error(code, out, err, r"no chosen method takes the parameter\(s\) bogus")


def test_cli_txt_features_file(tmp_path, capsys):
    path = tmp_path / "features.txt"
    path.write_text("1 2 3\n")
    code, out, err = run_cli(capsys, "compress", str(path), "-m", "pool")
    assert_cli_error(code, out, err, r"must be \.npy or \.safetensors", r"features\.txt")


@pytest.mark.parametrize(
    "array, pattern",
    [
        (np.zeros((2, 4, 4, 3), dtype=np.int64), r"features in f\.npy must be a floating-point tensor"),
        (np.zeros((4, 3), dtype=np.float32), r"features in f\.npy must have shape \[T, H, W, C\]"),
        (np.full((2, 4, 4, 3), np.nan, dtype=np.float32), r"features in f\.npy contains NaN or inf"),
        (np.zeros((2, 15, 3), dtype=np.float32), r"N=15, not a square; give grid"),
    ],
)
def test_cli_bad_features_in_a_file(tmp_path, capsys, array, pattern):
    np.save(tmp_path / "f.npy", array)
    code, out, err = run_cli(capsys, "compress", str(tmp_path / "f.npy"), "-m", "pool")
    assert_cli_error(code, out, err, pattern)


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["-r", "0"], r"retention must be in \(0, 1\]"),
        (["-r", "nan"], r"retention must be in \(0, 1\]"),
        (["-p", "mode=max"], r"mode must be one of"),
        (["-p", "stride=0"], r"stride must be in"),
        (["-o", "tokens.txt"], r"output must be a \.safetensors file"),
    ],
)
def test_cli_bad_arguments_for_one_method(capsys, args, pattern):
    code, out, err = run_cli(capsys, "compress", "--synthetic", "2x6x6x4", "-m", "pool", "--repeat", "1", *args)
    assert_cli_error(code, out, err, pattern)


def test_cli_corrupt_safetensors_file(tmp_path, capsys):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"not a safetensors file" * 4)
    code, out, err = run_cli(capsys, "compress", str(path), "-m", "pool")
    assert_cli_error(code, out, err, r"corrupt\.safetensors")


def test_cli_repeat_zero_is_named(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects it while parsing
        cli.main(["compress", "--synthetic", "2x6x6x4", "-m", "pool", "--repeat", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--repeat" in err and "Traceback" not in err


def test_cli_unknown_device(capsys):
    code, out, err = run_cli(capsys, "compress", "--synthetic", "2x6x6x4", "-m", "pool", "--device", "nonsense")
    assert_cli_error(code, out, err, r"device")


@pytest.mark.parametrize("args", [[], ["--synthetic", "2x6x6x4", "-o", "tokens.safetensors"]])
def test_cli_usage_errors_exit_with_2(capsys, args):
    try:
        code = cli.main(["compress", *args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    assert code == 2


# ---------------------------------------------------------------------------------------------------------------
# tensor kinds that would reach torch internals (issue 12): refused up front, by the argument's name
# ---------------------------------------------------------------------------------------------------------------

FLOAT8 = [getattr(torch, d) for d in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, d)]


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", FLOAT8, ids=str)
def test_float8_is_refused_by_name(name, dtype):
    with pytest.raises(TypeError, match=rf"^x: {str(dtype).replace('torch.', '')} is not supported; use float16"):
        framepress.compress(video().to(dtype), name, 0.5)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_is_refused_by_name(name, layout):
    x = video().to_sparse() if layout == "coo" else video()[0, 0].to_sparse_csr()
    with pytest.raises(TypeError, match=r"^x: sparse tensors are not supported"):
        framepress.compress(x, name, 0.5)


@pytest.mark.parametrize("name", METHODS)
def test_meta_is_refused_by_name(name):
    with pytest.raises(ValueError, match=r"^x: meta tensors hold no values"):
        framepress.compress(video().to("meta"), name, 0.5)


@pytest.mark.parametrize("name", ["unified", "visionzip", "holitom", "fastvid"])
@pytest.mark.parametrize("kind", ["sparse", "meta", "float8"])
def test_odd_scores_are_refused_by_name(name, kind):
    scores = torch.rand(2, 4, 5)
    scores = {"sparse": scores.to_sparse(), "meta": scores.to("meta"), "float8": scores.to(FLOAT8[0])}[kind]
    with pytest.raises((TypeError, ValueError), match=r"^scores: "):
        framepress.compress(video(), name, 0.5, scores=scores)


# ---------------------------------------------------------------------------------------------------------------
# every method's parameter values: types, ranges, sizes against the grid (issue 12)
# ---------------------------------------------------------------------------------------------------------------

PARAMETERS = [
    # gridpool: the PTG levels
    ("gridpool", None, {"group_sizes": 4}, TypeError, r"^group_sizes must be a tuple of ints, got int"),
    ("gridpool", None, {"group_sizes": None}, TypeError, r"^group_sizes must be a tuple of ints, got NoneType"),
    ("gridpool", None, {"group_sizes": 4.0}, TypeError, r"^group_sizes must be a tuple of ints, got float"),
    ("gridpool", None, {"group_sizes": (4, 4.0, 4)}, TypeError, r"^group_sizes\[1\] must be an int, got float"),
    ("gridpool", None, {"group_sizes": (4, 0, 4)}, ValueError, r"^group_sizes\[1\] must be in \[1, 64\], got 0"),
    ("gridpool", None, {"group_sizes": (10**18,) * 3}, ValueError, r"^group_sizes\[0\] must be in \[1, 64\]"),
    ("gridpool", None, {"group_sizes": ()}, ValueError, r"^group_sizes must hold at least one int"),
    ("gridpool", None, {"strides": None}, TypeError, r"^strides must be a tuple of ints, got NoneType"),
    ("gridpool", None, {"strides": (2, -4, 8)}, ValueError, r"^strides\[1\] must be in"),
    ("gridpool", None, {"strides": (2, 4)}, ValueError, r"^group_sizes and strides must pair up per level"),
    # gridpool: the NSP window
    ("gridpool", None, {"padding": 2}, ValueError, r"^padding must be at most half the kernel \(kernel=2: at most 1\), got 2"),
    ("gridpool", None, {"kernel": 2, "padding": 2}, ValueError, r"^padding must be at most half the kernel"),
    ("gridpool", None, {"kernel": 3, "padding": 5}, ValueError, r"^padding must be at most half the kernel"),
    ("gridpool", 0.5, {"padding": 10**12}, ValueError, r"^padding must be at most half the 4x5 grid's larger side \(2\), got 10+"),
    ("gridpool", None, {"padding": 10**6}, ValueError, r"^padding must be at most half the 4x5 grid's larger side"),
    ("gridpool", None, {"padding": -1}, ValueError, r"^padding must be in \[0, None\], got -1"),
    ("gridpool", None, {"padding": 1.0}, TypeError, r"^padding must be an int, got float"),
    ("gridpool", None, {"kernel": 0}, ValueError, r"^kernel must be in \[1, None\], got 0"),
    ("gridpool", None, {"kernel": 6}, ValueError, r"^kernel=6 with padding=0 does not fit the 4x5 grid"),
    ("gridpool", None, {"kernel": 2.5}, TypeError, r"^kernel must be an int, got float"),
    ("gridpool", 0.5, {"kernel": 2}, ValueError, r"retention or kernel"),
    ("gridpool", None, {"nsp": False, "padding": 1}, ValueError, r"^padding must be at most half the kernel \(kernel=1"),
    ("gridpool", None, {"ptg": "yes"}, TypeError, r"^ptg must be True or False, got str"),
    ("gridpool", None, {"nsp": 1}, TypeError, r"^nsp must be True or False, got int"),
    ("gridpool", None, {"temp": -1}, ValueError, r"^temp must be a finite number in \[0\.0, 10000\.0\]"),
    ("gridpool", None, {"temp": math.inf}, ValueError, r"^temp must be a finite number"),
    ("gridpool", None, {"p": 0.1}, ValueError, r"^p must be a finite number in \[0\.5, 16\.0\]"),
    ("gridpool", None, {"p": "2"}, TypeError, r"^p must be a number, got str"),
    ("gridpool", None, {"setting": "2:1"}, ValueError, r"^setting must be one of '4:1', '8:1'"),
    # the others
    ("unified", 0.5, {"tau": 1.5}, ValueError, r"^tau must be a finite number in \[-1\.0, 1\.0\]"),
    ("unified", 0.5, {"cluster_ratio": "0.3"}, TypeError, r"^cluster_ratio must be a number"),
    ("unified", 0.5, {"k": 0}, ValueError, r"^k must be in \[1, None\], got 0"),
    ("unified", 0.5, {"merge": "max"}, ValueError, r"^merge must be one of 'mean', 'center'"),
    ("unified", 0.5, {"beta": math.nan}, ValueError, r"^beta must be a finite number"),
    ("visionzip", 0.5, {"dominant_share": 2}, ValueError, r"^dominant_share must be a finite number in \[0\.0, 1\.0\]"),
    ("visionzip", 0.5, {"contextual": "max"}, ValueError, r"^contextual must be one of 'sum', 'mean'"),
    ("holitom", 0.5, {"tau": None}, TypeError, r"^tau must be a number, got NoneType"),
    ("holitom", 0.5, {"max_window": 1}, ValueError, r"^max_window must be in \[2, None\], got 1"),
    ("holitom", 0.5, {"k": 7.0}, TypeError, r"^k must be an int, got float"),
    ("fastvid", 0.5, {"min_segments": 0}, ValueError, r"^min_segments must be in \[1, None\], got 0"),
    ("fastvid", 0.5, {"anchor_stride": True}, TypeError, r"^anchor_stride must be an int, got bool"),
    ("fastvid", 0.5, {"context_share": -0.1}, ValueError, r"^context_share must be a finite number"),
    ("prunevid", 0.5, {"temporal_segment_ratio": 0}, ValueError, r"^temporal_segment_ratio must be in \(0, 1\], got 0"),
    ("prunevid", 0.5, {"cluster_ratio": 1.5}, ValueError, r"^cluster_ratio must be a finite number"),
    ("prunevid", None, {"k": "7"}, TypeError, r"^k must be an int, got str"),
    ("dycoke", None, {"prune": 1.5}, ValueError, r"^prune must be a finite number in \[0\.0, 1\.0\]"),
    ("pool", None, {"stride": "2"}, TypeError, r"^stride must be an int, got str"),
    ("frames", None, {"num_frames": "1"}, TypeError, r"^num_frames must be an int, got str"),
    ("sttm", None, {"root_level": 0.5}, TypeError, r"^root_level must be an int, got float"),
]


@pytest.mark.parametrize("name, retention, params, error, pattern", PARAMETERS)
def test_method_parameters(name, retention, params, error, pattern):
    if "scores" in registry.get(name).required:
        params = {**params, "scores": "norm"}
    with pytest.raises(error, match=pattern):
        framepress.compress(video(), name, retention, **params)


@pytest.mark.parametrize("name, retention, params, error, pattern", PARAMETERS)
def test_bind_checks_the_same_values(name, retention, params, error, pattern):
    """The registry's bind (what apply runs) gives the same error without any input, except for the checks
    that need the grid, the retention or the kernel the call derives."""
    if "grid" in pattern or "retention" in pattern or ("padding" in params and "kernel" not in params):
        pytest.skip("needs the grid, the retention or the derived kernel")
    with pytest.raises(error, match=pattern):
        registry.get(name).bind({**params, "scores": None} if "scores" in registry.get(name).params else params)


@pytest.mark.parametrize(
    "name, params, error, pattern",
    [
        ("framefusion", {"similarity": "0.6"}, TypeError, r"^similarity must be a number"),
        ("framefusion", {"cost": 2}, ValueError, r"^cost must be a finite number in \[0\.0, 1\.0\]"),
        ("unified_merge", {"lam": -1}, ValueError, r"^lam must be a finite number"),
        ("prunevid_prune", {"alpha": 0}, ValueError, r"^alpha must be in \(0, 1\], got 0"),
    ],
)
def test_in_llm_parameters_at_bind(name, params, error, pattern):
    with pytest.raises(error, match=pattern):
        registry.get(name).bind(params)


def test_gridpool_padding_within_half_the_kernel_gives_valid_tokens():
    out = framepress.compress(video(H=5, W=5), "gridpool", kernel=3, padding=1)
    out.check()
    assert out.info["grid"] == (2, 2)


def test_bind_fills_defaults_and_normalizes():
    bound = registry.get("gridpool").bind({"group_sizes": [2, 2], "strides": [2, 4]})
    assert bound["group_sizes"] == (2, 2) and bound["strides"] == (2, 4) and bound["padding"] == 0


# ---------------------------------------------------------------------------------------------------------------
# apply checks parameter values at once (not at the first generate), and leaves nothing patched
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from framepress.models.tiny import tiny_model

    return tiny_model("llava_onevision", layers=2)


@pytest.mark.parametrize(
    "method, params, error, pattern",
    [
        ("sttm", {"tau_s": "x"}, TypeError, r"^tau_s must be a number, got str"),
        ("sttm", {"variant": "fastest"}, ValueError, r"^variant must be one of"),
        ("gridpool", {"group_sizes": 4}, TypeError, r"^group_sizes must be a tuple of ints"),
        ("gridpool", {"kernel": 2, "padding": 3}, ValueError, r"^padding must be at most half the kernel"),
        ("pool", {"stride": 0}, ValueError, r"^stride must be in"),
        ("unified", {"lam": 2.0}, ValueError, r"^lam must be a finite number"),
        ("holitom", {"tau": "high"}, TypeError, r"^tau must be a number"),
        ("fastv", {"bogus": 1}, ValueError, r"unknown parameter\(s\) bogus"),
    ],
)
def test_apply_checks_values_at_once(tiny, method, params, error, pattern):
    with pytest.raises(error, match=pattern):
        framepress.apply(tiny, method, retention=0.5, **params)
    assert "_framepress_patch" not in tiny.__dict__


# ---------------------------------------------------------------------------------------------------------------
# the table of methods (issue 12, item 5)
# ---------------------------------------------------------------------------------------------------------------


def test_methods_table_fits_a_terminal_and_shows_real_defaults(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    for shown in ("tau_s=0.8", "tau_t=0.6", "root_level=1", "stride=2", "num_frames=T//2", "dominant_share=54/64"):
        assert shown in out, shown
    assert "=None (" not in out and "tau_s=None" not in out and "num_frames=None" not in out
    for name in framepress.methods():
        assert re.search(rf"^{name} +(pre-llm|in-llm|decode) +budget: ", out, re.M), name


def test_sttm_info_says_when_a_threshold_switches_merging_off():
    out = framepress.compress(video(), "sttm", tau_s=1.5, tau_t=1.2)
    assert out.info["off"] == ["spatial (tau_s=1.5 > 1)", "temporal (tau_t=1.2 > 1)"]
    assert "off" not in framepress.compress(video(), "sttm").info
