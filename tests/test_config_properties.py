"""Property-based tests (hypothesis) of config parsing: ``PruneConfig.from_dict`` / ``load`` / ``resolved``
and the ``grasprune prune`` argument parser, on random JSON and random argument lists.

Whatever the input, the only failure is a one-line ``UserError`` (argparse's own usage errors: exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from grasprune.cli.main import build_parser, config_from_args
from grasprune.config import (
    DTYPES,
    EXPERIMENTAL_VARIANTS,
    LAYER_MINIMUMS,
    METHODS,
    SCORE_INITS,
    SECOND_MOMENTS,
    TIE_BREAKS,
    VARIANTS,
    PruneConfig,
    experimental_options,
)
from grasprune.errors import UserError
from grasprune.evaluation.perplexity import EVAL_DATASETS

FIELDS = {f.name: f.type for f in dataclasses.fields(PruneConfig)}
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = {"allow_nan": False, "allow_infinity": False}
positive = st.floats(min_value=1e-6, max_value=1e3, **finite)
counts = st.integers(1, 10**6)
# text with the characters that break one-line messages drawn often
texts = st.text(max_size=20) | st.text("ab \n\r\t'\"\\", max_size=8)
# every field's valid values (a new field without an entry here fails test_every_field_has_a_strategy)
VALID = {
    "model": st.text(min_size=1, max_size=30).filter(str.strip),
    "keep_ratio": st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True, **finite),
    "align": st.integers(1, 4096),
    "method": st.sampled_from(METHODS),
    "variant": st.sampled_from(list(VARIANTS)),
    "score_init": st.none() | st.sampled_from(SCORE_INITS),
    "init_strength": st.none() | positive,
    "tau_end": st.none() | positive,
    "warmup": st.none() | st.floats(min_value=0.0, max_value=1.0, exclude_max=True, **finite),
    "distill": st.none() | st.floats(0.0, 1.0),
    "distill_topk": st.none() | st.integers(0, 10**6),
    "rescale_distill": st.none() | st.floats(0.0, 1.0),
    "calib_data": st.text(max_size=30),
    "calib_samples": st.none() | counts,
    "block_len": st.none() | st.integers(2, 10**6),
    "epochs": st.none() | counts,
    "rescale_data": st.text(max_size=30),
    "rescale_samples": st.none() | counts,
    "rescale_epochs": st.integers(0, 1000),
    "lr": st.none() | positive,
    "rescale_lr": positive,
    "tau": positive,
    "seed": st.integers(0, 2**32 - 1),
    "device": st.sampled_from(["auto", "cpu"]),
    "dtype": st.sampled_from(DTYPES),
    "checkpoint_every": counts,
    "eval_datasets": st.lists(st.sampled_from(EVAL_DATASETS), unique=True),
    "eval_seqlen": st.integers(2, 10**5),
    "eval_windows": st.none() | counts,
    "eval_dense": st.booleans(),
    "trust_remote_code": st.booleans(),
    "allow_pickle": st.booleans(),
    "device_map": st.none(),  # a name needs accelerate's devices, a file a JSON map: see test_scaling.py
    "fsdp": st.booleans(),
    "batch_blocks": counts,
    "teacher_cache_mb": st.integers(0, 10**7),
    "compile": st.booleans(),
    "tie_break": st.none() | st.sampled_from(TIE_BREAKS),
    "layer_minimum": st.none() | st.sampled_from(LAYER_MINIMUMS),
    "second_moment": st.none() | st.sampled_from(SECOND_MOMENTS),
    "experimental": st.booleans(),
}
# values out of range for each numeric or named field (the right JSON type, a wrong value)
OUT_OF_RANGE = {
    "keep_ratio": st.floats(max_value=0.0) | st.floats(min_value=1.0)  # 1.0 prunes nothing: refused
    | st.sampled_from([math.nan, math.inf, -math.inf]) | st.integers(1, 10**400),
    "align": st.integers(max_value=0),
    "method": texts.filter(lambda s: s not in METHODS),
    "variant": texts.filter(lambda s: s not in VARIANTS),
    "score_init": texts.filter(lambda s: s not in SCORE_INITS),
    "init_strength": st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf]),
    "tau_end": st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf]),
    "warmup": st.floats(max_value=0.0, exclude_max=True) | st.floats(min_value=1.0) | st.just(math.nan),
    "distill": st.floats(max_value=0.0, exclude_max=True) | st.floats(min_value=1.0, exclude_min=True)
    | st.just(math.nan),
    "distill_topk": st.integers(max_value=-1),
    "rescale_distill": st.floats(min_value=1.0, exclude_min=True) | st.just(math.nan),
    "calib_samples": st.integers(max_value=0),
    "block_len": st.integers(max_value=1),
    "epochs": st.integers(max_value=0),
    "rescale_samples": st.integers(max_value=0),
    "rescale_epochs": st.integers(max_value=-1),
    "lr": st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf]),
    "rescale_lr": st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf]),
    "tau": st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf]),
    "seed": st.integers(max_value=-1) | st.integers(min_value=2**32),
    "device": texts.filter(lambda s: s not in ("", "auto", "cpu") and not s.startswith("cuda")),
    "dtype": texts.filter(lambda s: s not in DTYPES),
    "checkpoint_every": st.integers(max_value=0),
    "eval_datasets": st.lists(st.sampled_from(["", " ", "wikitext2,ptb"]), min_size=1),
    "eval_seqlen": st.integers(max_value=1),
    "eval_windows": st.integers(max_value=0),
    "model": st.just("") | st.text(" \t\n", min_size=1),
    "batch_blocks": st.integers(max_value=0),
    "teacher_cache_mb": st.integers(max_value=-1),
    "tie_break": texts.filter(lambda s: s not in TIE_BREAKS),
    "layer_minimum": texts.filter(lambda s: s not in LAYER_MINIMUMS),
    "second_moment": texts.filter(lambda s: s not in SECOND_MOMENTS),
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
# JSON values of the wrong type for each annotation
WRONG = {
    "str": lambda v: not isinstance(v, str),
    "str | None": lambda v: v is not None and not isinstance(v, str),
    "int": lambda v: isinstance(v, bool) or not isinstance(v, int),
    "int | None": lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, int)),
    "float": lambda v: isinstance(v, bool) or not isinstance(v, (int, float)),
    "float | None": lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))),
    "bool": lambda v: not isinstance(v, bool),
    "list[str]": lambda v: not isinstance(v, list) or not all(isinstance(x, str) for x in v),
}


def one_line(err: UserError) -> str:
    message = str(err)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    assert len(message) < 1000, len(message)
    return message


def valid_configs(min_size: int = 0):
    return st.fixed_dictionaries({}, optional={k: v for k, v in VALID.items() if k in FIELDS}).filter(
        lambda d: len(d) >= min_size and not (d.get("compile") and d.get("fsdp"))  # exclusive: one line each
    ).map(allow_experimental)


def allow_experimental(settings: dict) -> dict:
    """A valid config that sets an experimental option also says --experimental."""
    uses = settings.get("variant") in EXPERIMENTAL_VARIANTS or any(
        settings.get(name) is not None for name in experimental_options())
    return settings | {"experimental": True} if uses else settings


def test_every_field_has_a_strategy():
    assert set(FIELDS) <= set(VALID), "add the new PruneConfig field's valid values to VALID"
    assert {t for t in FIELDS.values()} <= set(WRONG)


@FAST
@given(valid_configs())
def test_valid_configs_round_trip_and_resolve(data):
    config = PruneConfig.from_dict(data)
    assert PruneConfig.from_dict(config.to_dict()) == config
    assert PruneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    resolved = config.resolved()
    assert resolved.resolved() == resolved  # idempotent
    assert PruneConfig.from_dict(json.loads(json.dumps(resolved.to_dict()))) == resolved
    assert None not in (resolved.calib_samples, resolved.block_len, resolved.epochs, resolved.lr)


@FAST
@given(valid_configs(), st.sampled_from(sorted(FIELDS)), json_values)
def test_a_wrong_type_is_a_one_line_user_error(data, key, value):
    assume(WRONG[FIELDS[key]](value))
    with pytest.raises(UserError) as err:
        PruneConfig.from_dict({**data, key: value})
    assert f"config key '{key}' must be" in one_line(err.value)


@FAST
@given(valid_configs(), texts.filter(lambda k: k not in FIELDS), json_values)
def test_an_unknown_key_is_a_one_line_user_error(data, key, value):
    with pytest.raises(UserError) as err:
        PruneConfig.from_dict({**data, key: value})
    assert "unknown config key" in one_line(err.value)


@FAST
@given(valid_configs(), st.data())
def test_an_out_of_range_value_is_refused_by_resolved(data, draw):
    key = draw.draw(st.sampled_from(sorted(set(OUT_OF_RANGE) & set(FIELDS))))
    value = draw.draw(OUT_OF_RANGE[key])
    config = PruneConfig.from_dict({**data, key: value})  # the right type: parsing accepts it
    with pytest.raises(UserError) as err:
        config.resolved()
    one_line(err.value)


@FAST
@given(st.dictionaries(st.sampled_from(sorted(FIELDS)) | st.text(max_size=8), json_values, max_size=8)
       | json_values)
def test_any_json_is_a_config_or_a_one_line_user_error(data):
    try:
        config = PruneConfig.from_dict(data)
    except UserError as err:
        one_line(err)
        return
    try:
        config.resolved()
    except UserError as err:
        one_line(err)


@FAST
@given(st.binary(max_size=200) | valid_configs().map(lambda d: json.dumps(d).encode())
       | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_config_file_loads_or_is_a_one_line_user_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_bytes(content)
    try:
        PruneConfig.load(path).resolved()
    except UserError as err:
        one_line(err)


def test_a_deeply_nested_or_missing_config_file_is_a_user_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="is not valid JSON"):
        PruneConfig.load(path)
    with pytest.raises(UserError, match="cannot read config"):
        PruneConfig.load(tmp_path / "missing.json")
    with pytest.raises(UserError, match="cannot read config"):
        PruneConfig.load(tmp_path)


FLAGS = {
    "--model": st.text(max_size=12),
    "--keep-ratio": st.floats().map(repr) | st.text(max_size=6),
    "--ratio": st.floats().map(repr),
    "--align": st.integers(-3, 300).map(str) | st.text(max_size=4),
    "--method": st.sampled_from(METHODS) | st.text(max_size=6),
    "--variant": st.sampled_from(list(VARIANTS)) | st.text(max_size=6),
    "--calib-samples": st.integers(-5, 10**6).map(str) | st.text(max_size=4),
    "--block-len": st.integers(-5, 10**6).map(str),
    "--epochs": st.integers(-5, 100).map(str),
    "--seed": st.integers(-(2**70), 2**70).map(str),
    "--lr": st.floats().map(repr),
    "--tau": st.floats().map(repr),
    "--warmup": st.floats().map(repr),
    "--distill": st.floats().map(repr),
    "--device": st.sampled_from(["cpu", "auto", "tpu", "cuda:7", ""]),
    "--dtype": st.sampled_from([*DTYPES, "fp16"]),
    "--eval": st.sampled_from(["none", "wikitext2", "wikitext2,ptb", ",", "c5"]),
    "--eval-seqlen": st.integers(-3, 5000).map(str),
    "--eval-windows": st.integers(-3, 50).map(str),
    "--checkpoint-every": st.integers(-3, 50).map(str),
}


@FAST
@given(st.lists(st.sampled_from(sorted(FLAGS)), max_size=6, unique=True).flatmap(
    lambda names: st.tuples(*[st.tuples(st.just(n), FLAGS[n]) for n in names])))
def test_the_prune_argument_parser_gives_a_config_or_a_one_line_error(pairs):
    argv = ["prune", *[f"{flag}={value}" for flag, value in pairs]]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 2
        return
    try:
        config_from_args(args).resolved()
    except UserError as err:
        one_line(err)
