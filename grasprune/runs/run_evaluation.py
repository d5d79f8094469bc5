"""Dense vs pruned (vs healed) measurements of a completed run: what ``grasprune evaluate`` computes and the
studio's Evaluate page starts as a job. Each result is stored in the run's ``evaluations.json`` as soon as it
is computed (``runs.evaluations``), so a stopped evaluation keeps what it finished and a later one computes
only what is missing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from grasprune.errors import Stopped, UserError
from grasprune.evaluation.generation import Sampling
from grasprune.events import Emit, no_events
from grasprune.runs import evaluations
from grasprune.runs.store import Run


@dataclass(frozen=True)
class Compared:
    """A model compared: its name, its key in the run's stored evaluations, how it loads, where it is."""

    label: str
    key: str
    kind: str  # dense: load_model; pruned: load_pruned (a healed checkpoint is one)
    spec: str


def compared_models(run: Run, healed: dict[str, Path] | None = None) -> list[Compared]:
    """The run's dense model and pruned checkpoint, and each healed checkpoint under its key
    (``healed-<job id>``: a later heal is measured afresh)."""
    models = [Compared("dense", "dense", "dense", run.config().model),
              Compared("pruned", "pruned", "pruned", str(run.output_dir()))]
    return models + [Compared("healed", key, "pruned", str(path)) for key, path in (healed or {}).items()]


@dataclass(frozen=True)
class Request:
    """What to measure: perplexity on ``datasets``, zero-shot accuracy on ``tasks``, and/or a greedy
    continuation of ``prompt``; the settings of each are part of its stored key."""

    datasets: tuple[str, ...] = ()
    seqlen: int = 512
    windows: int = 64
    tasks: tuple[str, ...] = ()
    limit: int = 200
    prompt: str | None = None
    new_tokens: int = 48
    sampling: Sampling = field(default_factory=Sampling)

    def keys(self, model: Compared) -> list[tuple[str, str, str]]:
        """(measurement, key, its name) for everything asked of ``model``."""
        found = [("ppl", evaluations.ppl_key(model.key, d, self.seqlen, self.windows), d) for d in self.datasets]
        found += [("zeroshot", evaluations.zeroshot_key(model.key, t, self.limit), t) for t in self.tasks]
        if self.prompt:
            key = evaluations.generation_key(model.key, self.prompt, self.new_tokens, self.sampling.key())
            found.append(("generation", key, "text"))
        return found

    def check(self) -> None:
        if not (self.datasets or self.tasks or self.prompt):
            raise UserError("nothing to evaluate: pass --ppl DATASETS, --zeroshot TASKS or --generate PROMPT")
        if self.seqlen < 2 or self.windows < 1 or self.limit < 1 or self.new_tokens < 1:
            raise UserError("--seqlen must be at least 2, and --windows, --limit and --new-tokens at least 1")
        self.sampling.check()


def load_compared(run: Run, model: Compared):
    from grasprune.config import resolve_device

    config = run.config()
    try:
        device = resolve_device(config.device)
    except UserError:
        device = "cpu"
    if model.kind == "pruned":
        from grasprune.method.export import load_pruned

        return load_pruned(model.spec, device=device)
    from grasprune.method.models import load_model

    return load_model(model.spec, device=device, trust_remote_code=config.trust_remote_code,
                      allow_pickle=config.allow_pickle)


def evaluate_run(run: Run, models: list[Compared], request: Request, emit: Emit = no_events,
                 stop: threading.Event | None = None) -> int:
    """Compute every missing result of ``request`` for each model, storing each when done; return how many
    were computed. ``stop`` ends it between windows (or items), raising ``Stopped``."""
    request.check()
    stop = stop or threading.Event()
    stored = evaluations.load(run)
    todo = [(m, what, key, name) for m in models for what, key, name in request.keys(m) if key not in stored]
    emit("phase", phase="loading", total=len(todo))
    loaded, done = None, 0
    for model, what, key, name in todo:  # grouped by model: each is loaded once, one in memory at a time
        if stop.is_set():
            raise Stopped(f"stopped after {done} of {len(todo)} results")
        emit("phase", phase="evaluation", model=model.label, measurement=what, name=name, done=done, total=len(todo))
        if loaded != model.spec:
            lm = tokenizer = None  # the previous model goes before the next one loads
            (lm, tokenizer), loaded = load_compared(run, model), model.spec
        evaluations.record(run, key, _measure(lm, tokenizer, what, name, request, model, emit, stop))
        done += 1
        emit("result", key=key, done=done, total=len(todo))
    emit("done", computed=done)
    return done


def _measure(model, tokenizer, what: str, name: str, request: Request, compared: Compared, emit: Emit,
             stop: threading.Event) -> dict:
    if what == "ppl":
        from grasprune.evaluation.perplexity import perplexity

        def progress(done: int, total: int) -> None:
            emit("progress", phase="evaluation", done=done, total=total, label=f"{compared.label} · {name}")
            if stop.is_set():
                raise Stopped(f"stopped during {compared.label} · {name}")

        return perplexity(model, tokenizer, name, request.seqlen, request.windows, progress).to_json()
    if what == "zeroshot":
        from grasprune.evaluation.zeroshot import evaluate_zeroshot

        return evaluate_zeroshot(model, tokenizer, [name], limit=request.limit, batch_size=8, progress=False)["tasks"][name]
    from grasprune.evaluation.generation import generate_text

    return {"text": generate_text(model, tokenizer, request.prompt, request.new_tokens, request.sampling)}
