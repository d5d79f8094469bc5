"""The command the studio shows parses back into the same prune config."""

from __future__ import annotations

import shlex

from grasprune.cli.command import prune_command
from grasprune.cli.main import build_parser, config_from_args
from grasprune.config import PruneConfig


def parsed(command: str) -> PruneConfig:
    return config_from_args(build_parser().parse_args(shlex.split(command)[1:]))


def test_shown_command_round_trips_every_setting():
    config = PruneConfig(model="/models/my model", keep_ratio=0.55, calib_data="c4#lines=0:10", calib_samples=8,
                         block_len=128, epochs=3, rescale_samples=4, rescale_epochs=0, seed=7, device="cpu",
                         dtype="fp32", checkpoint_every=4, eval_datasets=["wikitext2", "ptb"], eval_seqlen=128,
                         eval_windows=2, eval_dense=False, trust_remote_code=True)
    assert "--no-eval-dense" in prune_command(config)
    assert parsed(prune_command(config)) == config


def test_defaults_give_a_short_command_with_the_page_settings():
    command = prune_command(PruneConfig(calib_samples=32, block_len=256, epochs=1, rescale_samples=32))
    assert command == ("grasprune prune --model smollm2-135m --keep-ratio 0.7 --calib-data 'wikitext2#lines=0:50%' "
                       "--calib-samples 32 --block-len 256 --epochs 1 --rescale-samples 32 --seed 0 --device auto")
    assert parsed(prune_command(PruneConfig(eval_datasets=[]))).eval_datasets == []


def test_every_prune_option_is_defined_once_on_the_config():
    """The parser's flags are exactly the config's fields (plus the run's own and --ratio), each with the
    help written on the field, and a config with every field away from its default round-trips."""
    import argparse
    import dataclasses

    from grasprune.cli.options import flag_of

    parser = build_parser()
    prune = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["prune"]
    flags = {flag: action for action in prune._actions for flag in action.option_strings}
    fields = dataclasses.fields(PruneConfig)
    run_flags = {"-h", "--help", "--ratio", "--config", "--out", "--runs-dir", "--resume", "--overwrite"}
    assert set(flags) - run_flags == {flag_of(f) for f in fields}
    for field in fields:
        assert field.metadata["help"] and field.metadata["help"].replace("%", "%%") in flags[flag_of(field)].help
    changed = PruneConfig(model="m", keep_ratio=0.5, align=64, method="taylor", variant="paper", score_init="flap",
                          init_strength=0.5, tie_break="index", layer_minimum="after", tau_end=0.5, warmup=0.1,
                          distill=0.2, distill_topk=8, rescale_distill=0.3, calib_data="c4", calib_samples=3,
                          block_len=9, epochs=5, rescale_data="ptb", rescale_samples=2, rescale_epochs=3, lr=0.5,
                          rescale_lr=0.25, second_moment="group", tau=2.0, seed=3, device="cpu", dtype="fp32",
                          checkpoint_every=5, eval_datasets=["ptb"], eval_seqlen=32, eval_windows=3, eval_dense=False,
                          trust_remote_code=True, allow_pickle=True, device_map="auto", fsdp=True, batch_blocks=2,
                          teacher_cache_mb=5, compile=True, experimental=True)
    default = PruneConfig()
    assert all(getattr(changed, f.name) != getattr(default, f.name) for f in fields)
    assert parsed(prune_command(changed)) == changed


def test_experimental_options_need_the_experimental_switch():
    import pytest

    from grasprune.errors import UserError

    for settings in ({"tau_end": 0.5}, {"warmup": 0.1}, {"distill_topk": 64}, {"variant": "importance"}):
        with pytest.raises(UserError, match="experimental.*add --experimental"):
            PruneConfig(device="cpu", **settings).resolved()
        resolved = PruneConfig(device="cpu", experimental=True, **settings).resolved()
        assert PruneConfig.from_dict(resolved.to_dict()).resolved() == resolved  # a saved run resumes
    plain = PruneConfig(device="cpu").resolved()  # its warm-up 0 and top-k 0 are every variant's own
    assert PruneConfig.from_dict(plain.to_dict()).resolved() == plain
