"""The command the studio shows parses back into the same prune config."""

from __future__ import annotations

import shlex

from grasprune.cli import build_parser, config_from_args
from grasprune.cli_command import prune_command
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
