"""The ``tp-harness`` command line (also ``python -m tp_harness``).

Subcommands: optimize, evaluate, sweep, leaderboard, tasks, models, plugins, cache. This is a wiring point: it
parses flags, builds the plugin registries, shows progress bars and prints results. A deliberate
error (``TpHarnessError``) is printed as one message without a traceback, with its exit code
(2 for bad specs, data and usage). So is an ``OSError`` on a file the user controls (a full disk, a path that is
a file): one ``tp-harness: error:`` line with the path and what to do, exit 2. Bad flag values get the same one
line from argparse (``_Parser``), without the usage dump.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tp_harness.constants import (
    DEFAULT_BUDGET,
    DEFAULT_MODEL,
    DEFAULT_REFERENCE_SHARE,
    DEFAULT_SELECTION_ALPHA,
    DEFAULT_SOURCES,
    DEFAULT_TARGETS,
    OUTPUT_TYPES,
    SPLITS,
    SWEEP_BUDGET,
)
from tp_harness.errors import TpHarnessError, UsageError

log = logging.getLogger("tp_harness")


def _tqdm_progress(label: str, total: int, *, position: int | None = None, leave: bool = True):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label, unit="cand", dynamic_ncols=True, file=sys.stderr, position=position,
               leave=leave)

    class _Bar:
        def advance(self, n: int = 1, *, step: int | None = None, best: float | None = None, unused: int = 0) -> None:
            if unused:
                bar.total = max(bar.n + n, bar.total - unused)
            bar.update(n)
            bar.set_postfix(step=step, best=f"{best:.3f}" if best is not None else "n/a")
            if bar.n >= bar.total:
                bar.close()

    return _Bar()


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one ``tp-harness: error:`` line, exit 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        command = self.prog.removeprefix("tp-harness").strip()
        help_hint = f"tp-harness {command} --help" if command else "tp-harness --help"
        self.exit(2, f"tp-harness: error: {message} (see {help_hint})\n")


def _positive_int(text: str) -> int:
    """An integer >= 1 (``--limit``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value} (leave it out for the whole split)")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _batch_size(text: str) -> str:
    """``auto`` or an integer >= 1 (``--batch-size``), kept as text as the backends take it."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or auto, got {value}")
    return str(value)


def _seed_list(text: str) -> list[int]:
    """``--seeds``: comma-separated non-negative integers."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 0,1,2, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, e.g. 0,1,2, got {text!r}")
    return seeds


def _number_in(low: float, high: float, *, closed: bool) -> Callable[[str], float]:
    """An argparse type: a number in ``[low, high]`` (``closed``) or ``(low, high)``."""
    shown = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {shown}, got {text!r}") from None
        if not (low <= value <= high if closed else low < value < high):
            raise argparse.ArgumentTypeError(f"expected a number in {shown}, got {value:g}")
        return value

    return parse


#: ``--reference-share``: a share in [0, 1]; ``--selection-alpha``: a one-sided level in (0, 0.5)
_share = _number_in(0.0, 1.0, closed=True)
_alpha = _number_in(0.0, 0.5, closed=False)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    from tp_harness.backends import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"scorer LLM backend: embedded:<name>, hf, vllm, ... (default {DEFAULT_MODEL})")
    p.add_argument("--model-args", default="", help="key=value,... for the backend, e.g. pretrained=/path/to/model")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights dtype for hf/embedded models (bfloat16 is 1.3-2x faster on CPU)")
    p.add_argument("--batch-size", default="auto", type=_batch_size,
                   help="requests per forward pass: a number, or auto (default: 16 on CPU, lm-eval's probe on a GPU)")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="do not read or write the response cache ($TP_CACHE_DIR/responses.sqlite)")
    p.add_argument("--specs", action="append", default=[], metavar="DIR",
                   help="extra directory of task spec YAML files (repeatable)")
    p.add_argument("--output-type", "--scoring-mode", dest="scoring_mode", choices=list(OUTPUT_TYPES), default=None,
                   help="override each spec's default output_type")
    p.add_argument("--allow-data-outside-spec-dir", action="store_true",
                   help="let specs read data files outside their own directory (off: such a spec is refused; "
                        "only for specs you trust, see docs/security.md)")
    _add_chat_template_flag(p)


def _add_chat_template_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--apply-chat-template", choices=["auto", "on", "off"], default=None,
                   help="render prompts with the scorer's chat template, as lm-eval's --apply_chat_template: on, "
                        "off, or auto (off for multiple_choice, on for generate_until with a chat model); "
                        "default: each spec's tp.apply_chat_template, else auto")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _resources(text: str) -> dict[str, float]:
    """``slot=1,accel=0.5`` -> ``{"slot": 1.0, "accel": 0.5}`` (Ray custom resources)."""
    out: dict[str, float] = {}
    for part in _csv(text):
        name, sep, amount = part.partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            out[name.strip()] = -1.0
        if not sep or not name.strip() or out[name.strip()] <= 0:
            raise argparse.ArgumentTypeError(f"expected NAME=N with N > 0, got {part!r}")
    return out


def _studies_help() -> str:
    from tp_harness.spec.studies import STUDIES

    return "; ".join(f"{s.name}: {s.description}" for s in STUDIES.values())


def _resolve_tasks(args) -> None:
    """Fill ``args.sources`` and ``args.targets`` from ``--study`` or the defaults (see tp_harness.spec.studies)."""
    from tp_harness.spec.studies import resolve_tasks

    args.sources, args.targets = resolve_tasks(args.study, args.sources, args.targets, DEFAULT_SOURCES,
                                               DEFAULT_TARGETS)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tp-harness``."""
    parser = _Parser(prog="tp-harness", description="Transfer-Prompting: optimize and evaluate "
                                     "LLM prompts with ACC, IFR, ECE, AUROC, PR-P, PR-N (arXiv 2502.14211)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command")

    from tp_harness.optimizer.budget import BUDGETS
    from tp_harness.spec.studies import STUDIES

    o = sub.add_parser("optimize", help="run two-stage Transfer-Prompting (the main job)")
    _add_model_flags(o)
    o.add_argument("--reference-model", default=None, help="reference LLM backend (default: the scorer)")
    o.add_argument("--reference-model-args", default=None, help="key=value,... for the reference backend")
    o.add_argument("--sources", type=_csv, default=None,
                   help=f"source tasks for stage 1 (default {','.join(DEFAULT_SOURCES)})")
    o.add_argument("--target", "--targets", dest="targets", type=_csv, default=None,
                   help=f"target task(s) for stage 2 (default {','.join(DEFAULT_TARGETS)})")
    o.add_argument("--study", default=None, choices=sorted(STUDIES),
                   help="a named study sets --sources and --targets: " + _studies_help())
    o.add_argument("--budget", default=DEFAULT_BUDGET, choices=list(BUDGETS),
                   help=f"search size: smoke (CI, ~2 min), light (default main job), medium, heavy "
                        f"(default {DEFAULT_BUDGET})")
    o.add_argument("--seed", type=int, default=0)
    mode = o.add_mutually_exclusive_group()
    mode.add_argument("--no-transfer", action="store_true", help="ablation: stage 2 alone from the original prompt")
    mode.add_argument("--source-only", action="store_true", help="ablation: stage 1 alone; its best prompt as is")
    o.add_argument("--equal-budget", action="store_true",
                   help="with --no-transfer: as many candidate evaluations as the two-stage run's stage 1 and 2 "
                        "together, and about as many scorer requests (more docs per candidate), so the ablation "
                        "compares equal budgets")
    o.add_argument("--optimizer", default="transfer", help="registered optimizer (default transfer)")
    guard = o.add_mutually_exclusive_group()
    guard.add_argument("--selection-alpha", type=_alpha, default=DEFAULT_SELECTION_ALPHA, metavar="A",
                       help="the guarded final choice: the optimized prompt replaces the original only when the one-sided "
                            "(1-A) paired-bootstrap lower bound of its validation-composite gain is above 0 "
                            f"(default {DEFAULT_SELECTION_ALPHA})")
    guard.add_argument("--no-selection-guard", dest="selection_alpha", action="store_const", const=None,
                       help="ship the validation argmax even when it is within noise of the original (the paper's rule)")
    o.add_argument("--optimizer-option", dest="optimizer_options", action="append", default=[], metavar="KEY=VALUE",
                   help="an option for the optimizer (repeatable; a plugin optimizer reads ctx.optimizer_options)")
    o.add_argument("--reference-share", type=_share, default=DEFAULT_REFERENCE_SHARE,
                   help="share of each step's candidates written by the reference LLM; the rest are "
                        "evolutionary edits of the best prompts (default 0.5)")
    o.add_argument("--results-dir", default="results", help="where runs/ and LEADERBOARD.md live (default results)")
    o.add_argument("--run-id", default=None, help="name of the run directory (default: time-model-target-mode)")
    o.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue an interrupted run; other flags are taken from its config.json")

    e = sub.add_parser("evaluate", help="evaluate one prompt on one task")
    _add_model_flags(e)
    e.add_argument("--task", required=True)
    g = e.add_mutually_exclusive_group()
    g.add_argument("--prompt", default=None, help="the instruction text (default: the task's original)")
    g.add_argument("--prompt-file", type=Path, default=None, help="read the instruction from a file")
    e.add_argument("--split", default="test", choices=list(SPLITS))
    e.add_argument("--limit", type=_positive_int, default=None,
                   help="evaluate only the first N (>= 1) docs of the split")
    e.add_argument("--show-samples", type=_non_negative_int, default=0, metavar="N", help="print the first N sample records")

    sw = sub.add_parser("sweep", help="one optimization per (model, target, mode), resumable, then the leaderboard",
                        description="Runs one optimization per (model, target task, mode) with run ids "
                                    "sweep-<model>-<target>-<mode>-<budget>-s<seed>: a finished run is skipped, an "
                                    "interrupted one resumed from its journal, then the leaderboard is rebuilt.")
    sw.add_argument("--models", type=_csv, default=[DEFAULT_MODEL],
                    help=f"scorer LLMs, comma-separated (default {DEFAULT_MODEL})")
    sw.add_argument("--model-args", default="", help="key=value,... for every model's backend")
    sw.add_argument("--targets", "--tasks", dest="targets", type=_csv, default=None,
                    help=f"target tasks, comma-separated (default {','.join(DEFAULT_TARGETS)})")
    sw.add_argument("--sources", type=_csv, default=None,
                    help=f"source tasks for stage 1 (default {','.join(DEFAULT_SOURCES)})")
    sw.add_argument("--study", default=None, choices=sorted(STUDIES),
                    help="a named study sets --sources and --targets: " + _studies_help())
    sw.add_argument("--modes", type=_csv, default=["two_stage"],
                    help="two_stage (the paper's setup), no_transfer, source_only; comma-separated (default two_stage)")
    sw.add_argument("--budget", default=SWEEP_BUDGET, choices=list(BUDGETS),
                    help="search size of every run (default smoke)")
    sw.add_argument("--equal-budget", action="store_true",
                    help="no_transfer runs get the two-stage search's candidate evaluations and about its scorer "
                         "requests (the ablation at equal budget; on by default in studies)")
    seeds = sw.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="the seed of every run (default 0)")
    seeds.add_argument("--seeds", type=_seed_list, default=None, metavar="S,S,...",
                       help="one run per seed of every (model, target, mode), e.g. 0,1,2; the leaderboard aggregates "
                            "them (mean, an interval over seeds and docs, each seed's difference)")
    sw.add_argument("--results-dir", default="results", help="where runs/ and LEADERBOARD.md live (default results)")
    sw.add_argument("--reference-model", default=None,
                    help="reference LLM of every run (default: the scorer; embedded:smollm2-135m for a scorer "
                         "without a chat template)")
    sw.add_argument("--reference-model-args", default=None)
    sw.add_argument("--reference-share", type=_share, default=DEFAULT_REFERENCE_SHARE)
    sw.add_argument("--output-type", "--scoring-mode", dest="scoring_mode", choices=list(OUTPUT_TYPES), default=None,
                    help="lm-eval output_type to score every task in (default: each spec's)")
    _add_chat_template_flag(sw)
    sw.add_argument("--specs", action="append", default=[], metavar="DIR")
    sw.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    sw.add_argument("--batch-size", default="16", type=_batch_size)
    sw.add_argument("--no-cache", dest="cache", action="store_false", help="do not use the response cache")
    sw.add_argument("--executor", choices=["sequential", "ray"], default="sequential",
                    help="sequential (default: one run after another in this process) or ray (one Ray task per "
                         "model, on a Ray cluster; pip install 'tp-harness[ray]'; docs/scaling.md)")
    sw.add_argument("--ray-address", default=None,
                    help="the Ray cluster to join (auto, ray://HOST:10001); default: start a local one")
    sw.add_argument("--ray-max-retries", type=_non_negative_int, default=3,
                    help="re-runs of a model group whose worker or node died; each resumes from the journals")
    sw.add_argument("--ray-num-cpus", type=float, default=1.0,
                    help="CPUs per model group of a non-vLLM model (default 1; vllm asks for tensor_parallel_size GPUs)")
    sw.add_argument("--ray-resources", type=_resources, default={}, metavar="NAME=N,...",
                    help="custom Ray resources each model group asks for, e.g. slot=1")

    lb = sub.add_parser("leaderboard", help="rebuild the leaderboard from stored results.json files",
                        description="Markdown (overview, per-dataset tables with bootstrap CIs, ablations, runs "
                                    "and plots), CSV or JSON, rebuilt from stored files; no model is run.")
    lb.add_argument("results_dir", nargs="?", default="results", type=Path)
    lb.add_argument("--format", dest="fmt", default="md", choices=["md", "csv", "json"],
                    help="md (default; writes the file and its figures), csv or json (printed unless -o)")
    lb.add_argument("-o", "--output", type=Path, default=None,
                    help="default RESULTS_DIR/LEADERBOARD.md for md; standard output for csv and json")

    t = sub.add_parser("tasks", help="list task specs: domain, role, modes, split sizes, license and its flags")
    t.add_argument("--specs", action="append", default=[], metavar="DIR",
                   help="extra directory of task spec YAML files (repeatable)")
    sub.add_parser("models", help="list model backends and the embedded model zoo")
    pl = sub.add_parser("plugins", help="list registered plugins and what they provide",
                        description="Every registered data format, metric, backend, optimizer and reporter, with the "
                                    "plugin, distribution and version it comes from. TP_HARNESS_PLUGINS=a,b loads only "
                                    "those external plugins (\"\" none); TP_HARNESS_TRACE_PLUGINS=1 traces hook calls.")
    pl.add_argument("--format", choices=["table", "json"], default="table", help="output format (default table)")
    c = sub.add_parser("cache", help="the response cache: stats or clear")
    c.add_argument("action", choices=["stats", "clear"])
    c.add_argument("--model", default=None, metavar="MODEL_KEY", help="clear only this model's entries (see stats)")
    c.add_argument("--cache-dir", type=Path, default=None, help="default $TP_CACHE_DIR or ~/.cache/tp_harness")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tp-harness``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    # the command-line process is ours: no hub (models are local files) and no tokenizer fork warnings
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:
        for noisy in ("lm_eval", "transformers", "datasets", "accelerate", "httpx"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar too
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _COMMANDS[args.command](args)
    except TpHarnessError as err:
        print(f"tp-harness: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.filename is None and err.errno is None:
            raise  # not about a file: a bug, keep its traceback
        print(f"tp-harness: error: {_os_error_text(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tp-harness: interrupted; finished rows are in the journal, continue with --resume RUN_DIR",
              file=sys.stderr)
        return 130


def _os_error_text(err: OSError) -> str:
    """One line for an OS error on a user's file: the path, the reason and what to do."""
    import errno

    fix = {errno.ENOSPC: "free disk space, then continue an interrupted run with --resume RUN_DIR",
           errno.EDQUOT: "free disk quota, then continue an interrupted run with --resume RUN_DIR",
           errno.EACCES: "check the file's permissions", errno.EPERM: "check the file's permissions",
           errno.ENOENT: "check the path", errno.ENOTDIR: "a part of the path is a file, not a directory",
           errno.EISDIR: "pass a file, not a directory", errno.EROFS: "pass a writable location"}
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or err}; {fix.get(err.errno or 0, 'check the path and the disk')}"


def _registries():
    from tp_harness.plugin.manager import build_registries

    return build_registries()


def _cmd_optimize(args) -> int:
    from tp_harness.backends.base import parse_model_args
    from tp_harness.runs.runner import OptimizeSettings, run_optimize

    _resolve_tasks(args)
    settings = OptimizeSettings(
        model=args.model, model_args=args.model_args, reference_model=args.reference_model,
        reference_model_args=args.reference_model_args, sources=args.sources, targets=args.targets,
        budget=args.budget, seed=args.seed,
        mode="no_transfer" if args.no_transfer else "source_only" if args.source_only else "two_stage",
        optimizer=args.optimizer, scoring_mode=args.scoring_mode, results_dir=str(args.results_dir),
        spec_dirs=args.specs, dtype=args.dtype, batch_size=args.batch_size, run_id=args.run_id, cache=args.cache,
        reference_share=args.reference_share, allow_data_outside_spec_dir=args.allow_data_outside_spec_dir,
        apply_chat_template=args.apply_chat_template,
        optimizer_options=parse_model_args(",".join(args.optimizer_options), flag="--optimizer-option",
                                           example="rewrites=2"),
        selection_alpha=args.selection_alpha, equal_budget=args.equal_budget,
    )

    def show_projection(projection, ctx) -> None:
        resumed = " (resuming)" if args.resume else ""
        print(f"run {ctx.run.path}{resumed}", file=sys.stderr)
        print(f"scorer {ctx.scorer.name}, reference {ctx.reference.name}, mode {ctx.mode}, budget "
              f"{ctx.budget.name}: {ctx.budget.steps} steps x {ctx.budget.num_candidates} candidates", file=sys.stderr)
        print(projection.describe(), file=sys.stderr)

    run, results = run_optimize(settings, _registries(), resume=args.resume, progress=_tqdm_progress,
                                on_projection=show_projection)
    _print_results(results)
    print(f"\nrun directory: {run.path}")
    print(f"report: {run.path / 'report.md'}")
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _print_results(results: dict) -> None:
    from tabulate import tabulate

    rows = []
    for ev in results["tp"]["evaluations"]:
        m = ev["metrics"]
        rows.append([ev["task"], ev["prompt_kind"], *(_fmt(m.get(k)) for k in
                     ("acc", "acc_norm", "ifr", "ece", "auroc", "pr_p", "pr_n", "composite")), ev["n"]])
    print(tabulate(rows, headers=["task", "prompt", "ACC", "ACC-norm", "IFR", "ECE", "AUROC", "PR-P", "PR-N",
                                  "composite", "n"],
                   tablefmt="github"))
    for ev in results["tp"]["evaluations"]:
        if ev["prompt_kind"] != "original":
            print(f"\n{ev['task']} {ev['prompt_kind']}: {ev['prompt']}")


def _cmd_evaluate(args) -> int:
    from tp_harness.runs.runner import evaluate_prompt

    prompt = args.prompt
    if args.prompt_file is not None:
        try:
            prompt = args.prompt_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise UsageError(f"--prompt-file {args.prompt_file}: {err.strerror}; pass a readable text file") from None
        except UnicodeDecodeError as err:
            raise UsageError(f"--prompt-file {args.prompt_file}: not UTF-8 text ({err.reason} at byte {err.start}); "
                             "pass the instruction as a UTF-8 text file") from None
        if not prompt:
            raise UsageError(f"--prompt-file {args.prompt_file}: the file is empty; write the instruction in it")
    prep, ev = evaluate_prompt(task=args.task, registries=_registries(), prompt=prompt, model=args.model,
                               model_args=args.model_args, split=args.split, scoring_mode=args.scoring_mode,
                               limit=args.limit, spec_dirs=args.specs, dtype=args.dtype, batch_size=args.batch_size,
                               cache=args.cache, allow_data_outside=args.allow_data_outside_spec_dir,
                               apply_chat_template=args.apply_chat_template)
    from tabulate import tabulate

    m = ev.metrics
    print(f"task {ev.task} ({ev.mode}), split {ev.split}, n={ev.n}, model {args.model}, "
          f"chat template {'on' if ev.chat_template else 'off'}")
    print(f"instruction: {ev.instruction}")
    shown = ("acc", "acc_norm", "ifr", "ece", "auroc", "pr_p", "pr_n", "composite")
    print(tabulate([[_fmt(m.get(k)) for k in shown]],
                   headers=["ACC", "ACC-norm", "IFR", "ECE", "AUROC", "PR-P", "PR-N", "composite"], tablefmt="github"))
    extra = [k for k in m if k not in shown]
    if extra:  # metrics that plugins registered
        print("other metrics: " + ", ".join(f"{k}={_fmt(m[k])}" for k in extra))
    for r in ev.records[: args.show_samples]:
        print(f"- doc {r.doc_id}: answer={r.parsed_answer!r} gold={r.gold!r} conf={_fmt(r.confidence)} "
              f"correct={r.correct} response={r.response[:80]!r}")
    return 0


def _cmd_sweep(args) -> int:
    from tqdm.auto import tqdm

    from tp_harness.runs.runner import OptimizeSettings
    from tp_harness.runs.sweep import SweepSettings, plan_sweep, run_sweep

    _resolve_tasks(args)
    if args.equal_budget:  # refused before any run starts, not once per no_transfer run
        from tp_harness.optimizer.budget import get_budget
        from tp_harness.optimizer.transfer import check_equal_budget

        check_equal_budget(get_budget(args.budget))
    settings = SweepSettings(models=args.models, targets=args.targets, modes=args.modes, seeds=args.seeds,
                             run=OptimizeSettings(
        sources=args.sources, budget=args.budget, seed=args.seed, results_dir=str(args.results_dir),
        model_args=args.model_args, reference_model=args.reference_model,
        reference_model_args=args.reference_model_args, reference_share=args.reference_share,
        scoring_mode=args.scoring_mode, spec_dirs=args.specs, dtype=args.dtype, batch_size=args.batch_size,
        cache=args.cache, apply_chat_template=args.apply_chat_template, equal_budget=args.equal_budget,
    ))
    plan = plan_sweep(settings)
    if args.executor == "ray":
        return _sweep_on_ray(settings, args, len(plan))
    seeds_text = f"seeds {','.join(map(str, args.seeds))}" if args.seeds else f"seed {args.seed}"
    print(f"sweep: {len(plan)} runs ({len(args.models)} models x {len(args.targets)} targets x "
          f"{len(args.modes)} modes{f' x {len(args.seeds)} seeds' if args.seeds else ''}), budget {args.budget}, "
          f"{seeds_text}, results in {args.results_dir}",
          file=sys.stderr)
    outer = tqdm(total=len(plan), desc="sweep", unit="run", dynamic_ncols=True, file=sys.stderr, position=0)

    def on_item(item, event: str) -> None:
        if event in ("run", "resume"):
            outer.set_postfix_str(f"{'resuming' if event == 'resume' else 'running'} {item.run_id}")
        if event in ("skip", "done", "failed"):
            outer.update(1)
        if event == "failed":
            outer.write(f"failed: {item.run_id} (see the error below)", file=sys.stderr)

    def inner(label: str, total: int):
        return _tqdm_progress(label, total, position=1, leave=False)

    try:
        outcome = run_sweep(settings, _registries(), on_item=on_item, run_progress=inner)
    finally:
        outer.close()
    print(f"sweep done: {len(outcome.executed)} run, {len(outcome.resumed)} resumed, "
          f"{len(outcome.skipped)} already finished, {len(outcome.failed)} failed")
    for run_id, message in outcome.failed:
        print(f"tp-harness: error: run {run_id}: {message}", file=sys.stderr)
    print(f"leaderboard: {outcome.leaderboard}")
    return 1 if outcome.failed else 0


def _sweep_on_ray(settings, args, total: int) -> int:
    from tqdm.auto import tqdm

    from tp_harness.runs.sweep_ray import RayOptions, run_sweep_on_ray

    options = RayOptions(address=args.ray_address, max_retries=args.ray_max_retries, num_cpus=args.ray_num_cpus,
                         resources=args.ray_resources)
    print(f"sweep: {total} runs on Ray ({args.ray_address or 'a local Ray instance'}), one task per model, budget "
          f"{args.budget}, seed {args.seed}, results in {args.results_dir}", file=sys.stderr)
    bar = tqdm(total=total, desc="sweep (ray)", unit="run", dynamic_ncols=True, file=sys.stderr)

    def on_item(item, event: str) -> None:
        if event in ("skip", "done", "failed"):
            bar.update(1)

    try:
        outcome = run_sweep_on_ray(settings, options, on_item=on_item)
    finally:
        bar.close()
    print(f"sweep done: {len(outcome.executed)} run, {len(outcome.resumed)} resumed, "
          f"{len(outcome.skipped)} already finished, {len(outcome.failed)} failed")
    for run_id, message in outcome.failed:
        print(f"tp-harness: error: run {run_id}: {message}", file=sys.stderr)
    print(f"leaderboard: {outcome.leaderboard}")
    return 1 if outcome.failed else 0


def _cmd_leaderboard(args) -> int:
    from tp_harness.reporting.leaderboard import render_leaderboard, write_leaderboard

    if args.fmt != "md" and args.output is None:
        sys.stdout.write(render_leaderboard(args.results_dir, fmt=args.fmt))
        return 0
    path = write_leaderboard(args.results_dir, args.output, fmt=args.fmt)
    print(f"wrote {path}")
    return 0


def _cmd_tasks(args) -> int:
    from tabulate import tabulate

    from tp_harness.runs.runner import spec_index
    from tp_harness.spec.loader import load_spec

    rows = []
    regs = _registries()
    for name, path in sorted(spec_index(args.specs).items()):
        spec = load_spec(path, metric_names=set(regs.metrics.names()))
        s = spec.tp.splits
        lic = spec.tp.license
        rows.append([name, spec.tp.domain, spec.tp.role, ",".join(spec.modes), f"{s.optimize}/{s.validation}/{s.test}",
                     lic.name if lic else "", ", ".join(lic.flags) if lic else "", str(path)])
    print(tabulate(rows, headers=["task", "domain", "role", "modes", "optimize/validation/test", "license", "flags",
                                  "spec"], tablefmt="github"))
    return 0


def _cmd_models(args) -> int:
    from tabulate import tabulate

    from tp_harness.backends.embedded import ZOO

    regs = _registries()
    print(tabulate([[e.name, e.plugin, e.item.description] for e in regs.backends.entries()],
                   headers=["backend", "plugin", "description"], tablefmt="github"))
    print()
    print(tabulate([[f"embedded:{m.name}", m.packages_text, m.license, m.description] for m in ZOO.values()],
                   headers=["embedded model", "package", "license", "description"], tablefmt="github"))
    return 0


def _cmd_plugins(args) -> int:
    import json

    from tabulate import tabulate

    regs = _registries()
    items = []
    for kind in ("data_formats", "metrics", "backends", "optimizers", "reporters"):
        for e in getattr(regs, kind).entries():
            items.append({"kind": kind[:-1], "name": e.name, "plugin": e.plugin, "distribution": e.dist,
                          "version": e.version, "builtin": e.builtin,
                          "description": getattr(e.item, "description", "")})
    if args.format == "json":
        print(json.dumps(items, indent=2))
        return 0
    rows = [[i["kind"], i["name"], i["plugin"], i["distribution"] or "-", i["version"] or "-",
             "yes" if i["builtin"] else "no"] for i in items]
    print(tabulate(rows, headers=["kind", "name", "plugin", "distribution", "version", "built-in"],
                   tablefmt="github"))
    return 0


def _cmd_cache(args) -> int:
    from tabulate import tabulate

    from tp_harness.backends.cache import ResponseCache, default_cache_dir, open_cache
    from tp_harness.errors import CacheError

    try:
        cache = open_cache(args.cache_dir)
    except CacheError as err:
        if args.action != "clear" or args.model or not err.path.is_file():
            raise
        gone = ResponseCache.remove_files(err.path)  # unreadable: clearing it means deleting the file
        print(f"deleted the unreadable cache {', '.join(map(str, gone)) or err.path} "
              f"({args.cache_dir or default_cache_dir()})")
        return 0
    if args.action == "clear":
        n = cache.clear(args.model)
        print(f"deleted {n} cached responses{' of model ' + args.model if args.model else ''} from {cache.path}")
        memos = cache.path.parent / "memos"
        if not args.model and memos.is_dir():  # doc checks and plots a warm re-run reuses (tp_harness.files)
            import shutil

            shutil.rmtree(memos, ignore_errors=True)
            print(f"deleted the memos in {memos}")
        return 0
    info = cache.summary()
    print(f"{info['path']}: {info['entries']} responses, {info['bytes'] / 1e6:.1f} MB")
    if info["by_model"]:
        print(tabulate([[r["model"], r["request_type"], r["entries"]] for r in info["by_model"]],
                       headers=["model key", "request type", "entries"]))
    return 0


_COMMANDS = {"optimize": _cmd_optimize, "evaluate": _cmd_evaluate, "sweep": _cmd_sweep, "leaderboard": _cmd_leaderboard,
             "tasks": _cmd_tasks, "models": _cmd_models, "plugins": _cmd_plugins, "cache": _cmd_cache}

if __name__ == "__main__":
    sys.exit(main())
