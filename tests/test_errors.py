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
