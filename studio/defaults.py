"""The Prune page's starting settings: a run of the embedded SmolLM2 that finishes in minutes on CPU
(the paper's settings are ``grasprune.config.GPU_DEFAULTS``)."""

QUICK = {"keep_ratio": 0.7, "calib_samples": 32, "block_len": 256, "epochs": 1, "rescale_samples": 32,
         "eval_seqlen": 512, "eval_windows": 16, "checkpoint_every": 8}
