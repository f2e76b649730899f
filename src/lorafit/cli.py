"""Command line: `lorafit budget | train | evaluate | predict | export | sweep | report`.

Exit codes: 0 success, 2 user error (one line on stderr, no traceback; train over budget too), 1 `lorafit budget`
over budget, a failed trial (sweep) or anything else, 128 + the signal number when interrupted (130 Ctrl-C, 143
SIGTERM), 141 when the reader of stdout left first.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import warnings
from typing import Optional

from lorafit.errors import UserError

TOP_LEVEL_OVERRIDES = ("name", "output_dir")  # config keys outside a section that --KEY VALUE sets (and --budget)
TRAIN_SHORTCUTS = {
    "model": "model.name_or_path",
    "train_file": "data.train_file",
    "eval_file": "data.eval_file",
    "output_dir": "output_dir",
    "name": "name",
    "trust_pickle": "data.trust_pickle",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage mistakes are one line and exit 2 like every other user error."""

    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def parse_dotted_overrides(extra: list[str]) -> dict:
    """`--train.learning_rate 3e-4` / `--lora.r=16` pairs from the arguments argparse did not know."""
    from lorafit.config import check_override_key, example_value, parse_override

    overrides, i = {}, 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument '{arg}'; overrides look like --section.key value")
        key = arg[2:].split("=", 1)[0]
        # before the value: `lorafit budget --train-file x.csv` (budget has no such option) gave x.csv to argparse
        # as the config path, and then said '--train-file needs a value'
        if "." not in key and key.replace("-", "_") not in TOP_LEVEL_OVERRIDES + ("budget",):
            raise UserError(f"unknown option --{key}; config overrides look like --section.key value "
                            "(e.g. --lora.r 8)")
        check_override_key(key)  # `--lora.rr` was asked for a value, then named unknown
        if "=" in arg:
            value = arg.split("=", 1)[1]
            i += 1
        elif i + 1 < len(extra):
            value = extra[i + 1]
            i += 2
        else:
            raise UserError(f"{arg} needs a value, e.g. {arg} {example_value(key)}")
        key = key.replace("-", "_") if "." not in key else key
        overrides[key] = parse_override(key, value)
    return overrides


def _split_dotted(argv: list[str]) -> tuple[list[str], list[str], Optional[str]]:
    """Take `--section.key value` pairs, and the top-level overrides --name and --output_dir, out of argv before
    argparse sees them. A command that does not know them read their values as positionals: `lorafit budget --model
    M --lora.r 4` made '4' the config path, `lorafit budget --name X C` made X the config, and a value that looks like
    a negative number or is blank (`--train.max_steps -1`, `--data.text_separator ' '`) was lost. train and sweep,
    which name them as options too, get the same value as an override. An override without its value (a top-level
    one, or a dotted one followed by an option) is returned, to be named once argparse has read the rest
    (_missing_value): in `predict RUN --output --name` the mistake argparse names, --output's missing value, comes
    first."""
    rest, dotted, missing, i = [], [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        top_level = key.replace("-", "_") in TOP_LEVEL_OVERRIDES
        if top_level and "=" not in arg and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            # `--name --resume` named the run '--resume', `--name -v` '-v'; such a name can still be `--name=-v`
            missing = missing or arg
            i += 1
            continue
        if "." in key and "=" not in arg and i + 1 < len(argv) and re.match(r"--[A-Za-z]", argv[i + 1]):
            # `budget --lora.r --train.max_steps 5` read 5 as the config, `train C --lora.r 4 --data.eval_file
            # --overwrite` dropped --overwrite; a value may still start with a dash: -1, ' -- ', `--key=--x`
            missing = missing or arg
            i += 1
            continue
        if "." in key or top_level:
            takes_next = "=" not in arg and i + 1 < len(argv)
            dotted += argv[i:i + 2] if takes_next else [arg]
            i += 2 if takes_next else 1
        else:
            rest.append(arg)
            i += 1
    return rest, dotted, missing


def _missing_value(args, flag: str) -> None:
    """--name / --output-dir / --section.key given without a value: a command that takes no overrides does not know
    the option (`predict ... --name` asked for a value, then refused `--name x` as unrecognized). The commands that
    take --section.key overrides mark themselves with takes_overrides where their parser is built."""
    if not getattr(args, "takes_overrides", False):
        _no_extra([flag])
    from lorafit.config import example_value

    example = "runs" if flag.startswith("--output") else "my-run" if flag == "--name" else example_value(flag[2:])
    raise UserError(f"{flag} needs a value, e.g. {flag} {example}")


def _shortcut_overrides(args) -> dict:
    return {field: getattr(args, name) for name, field in TRAIN_SHORTCUTS.items() if getattr(args, name, None) is not None}


def cmd_budget(args, extra) -> int:
    from lorafit.budget import budget_report, over_budget_message
    from lorafit.config import load_config

    overrides = parse_dotted_overrides(extra)
    overrides.update({k: v for k, v in {
        "model.name_or_path": args.model, "lora.target_modules": args.target_modules, "lora.r": args.r,
        "model.num_labels": args.num_labels, "model.head": args.head,
    }.items() if v is not None})
    overrides.update(_budget_override(args))
    if isinstance(overrides.get("lora.r"), str) and overrides["lora.r"] != "auto":
        overrides["lora.r"] = int(overrides["lora.r"]) if overrides["lora.r"].isdigit() else overrides["lora.r"]
    cfg = load_config(args.config, overrides)
    report = budget_report(cfg, fit=args.fit)
    print(json.dumps(report.to_dict()) if args.json else report.table())
    if not report.fits:  # the count is printed all the same; the exit status lets a script gate on it, as train does
        print(f"lorafit: {over_budget_message(cfg, report)}", file=sys.stderr)
        return 1
    return 0


def cmd_train(args, extra) -> int:
    from lorafit.config import load_config
    from lorafit.train import is_main_process, run_training

    overrides = {**_shortcut_overrides(args), **_budget_override(args)}
    overrides.update(parse_dotted_overrides(extra))
    cfg = load_config(args.config, overrides)
    result = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    if "exit_code" in result:
        print(f"lorafit: training interrupted at step {result['global_step']}; checkpoint saved in "
              f"{cfg.run_dir}; rerun the same command (or add --resume) to continue", file=sys.stderr)
        return result["exit_code"]
    if is_main_process():  # under torchrun every rank returns here; one summary is enough
        print(json.dumps({k: result[k] for k in ("status", "best_eval_accuracy", "best_step", "final_eval_accuracy",
                                                 "trainable_params", "train_examples_per_second", "wall_seconds")}))
        print(f"run folder: {cfg.run_dir}", file=sys.stderr)
    return 0


def cmd_evaluate(args, extra) -> int:
    from lorafit.evaluate import evaluate_run, metrics_table

    _no_extra(extra)
    metrics = evaluate_run(args.run_dir, args.data, model_path=args.model, quantize=args.quantize,
                           trust_pickle=args.trust_pickle)
    print(json.dumps(metrics) if args.json else metrics_table(metrics))
    return 0


def cmd_predict(args, extra) -> int:
    from lorafit.predict import predict_file

    _no_extra(extra)
    table = predict_file(args.run_dir, args.input, args.output, id_column=args.id_column, text_column=args.text_column,
                         probabilities=args.probabilities, trust_pickle=args.trust_pickle, model_path=args.model,
                         batch_size=args.batch_size, quantize=args.quantize)
    print(f"wrote {len(table)} prediction{'' if len(table) == 1 else 's'} to {args.output}", file=sys.stderr)
    return 0


def cmd_sweep(args, extra) -> int:
    from lorafit.sweep import run_sweep

    overrides = {**_budget_override(args), **parse_dotted_overrides(extra)}
    # --output_dir is --output-dir: as a trial override it lost to the sweep file's output_dir, and kept its ~
    output_dir = overrides.pop("output_dir", None)
    output_dir = args.output_dir or (None if output_dir is None else _user_path(str(output_dir)))
    outcome = run_sweep(args.sweep, storage=args.storage, n_trials=args.n_trials, timeout=args.timeout,
                        model=args.model, train_file=args.train_file, output_dir=output_dir, overrides=overrides)
    return outcome.exit_code


def cmd_export(args, extra) -> int:
    from lorafit.export import export_run

    _no_extra(extra)
    out = export_run(args.run_dir, args.output, model_path=args.model, overwrite=args.overwrite)
    print(f"exported {args.run_dir} to {out} (load it with transformers.pipeline(\"text-classification\", "
          f"model=\"{out}\"))", file=sys.stderr)
    return 0


def cmd_report(args, extra) -> int:
    from lorafit.report import write_report

    _no_extra(extra)
    out = write_report(args.dir, args.out)
    print(f"report written to {out}", file=sys.stderr)
    return 0


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise UserError(f"unrecognized arguments: {' '.join(extra)}")


def _budget(text: str) -> Optional[int]:
    """--budget: null / none = no limit, as `budget: null` in a config file and `lorafit train --budget null`;
    whole numbers as those take them (1e6). argparse's int refused null."""
    from lorafit.config import parse_override

    value = parse_override("budget", text)  # refuses blank: `--budget "$UNSET"` lifted the limit without a word
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not float(value).is_integer()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; e.g. --budget 1000000, or --budget null "
                                         "for no limit")
    return None if value is None else int(value)


def _add_budget_option(parser: argparse.ArgumentParser) -> None:
    """--budget as an option of every command that takes it: as an unknown one (an override), its value was read as
    the config path when it came first (`lorafit train --budget null C` said 'config file not found: null')."""
    parser.add_argument("--budget", type=_budget, default=argparse.SUPPRESS,
                        help="trainable-parameter cap (overrides budget); null or none = no limit, as budget: null "
                             "in a config")


def _budget_override(args) -> dict:
    """{'budget': N} when --budget was given; None is a value here (--budget null, no limit)."""
    return {"budget": args.budget} if hasattr(args, "budget") else {}


def _user_path(text: str) -> str:
    """A path argument with ~ expanded: `--output=~/x` and quoted '~/x' reach us unexpanded by the shell."""
    return os.path.expanduser(text)


def _path_argument(text: str) -> str:
    """argparse's type for a path argument: _user_path, blank refused. `--train-file "$UNSET"` said '. is a folder',
    and `predict RUN --model ""` used the saved base model as if --model had not been given."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is blank; give a path")
    return _user_path(text)


def _column_argument(text: str) -> str:
    """argparse's type for a column name: blank refused. `predict --text-column "$UNSET"` predicted the run's own
    text columns, exit 0, as if the option had not been given."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is blank; give a column name")
    return text


def _positive_int(text: str) -> int:
    """--n-trials: 0 or less ran no trial and exited 0 as if the sweep were done."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; e.g. --n-trials 10") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1; e.g. --n-trials 10")
    return value


def _positive_seconds(text: str) -> float:
    """--timeout: a negative one ran no trial and exited 0; nan never ended a search."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds; e.g. --timeout 3600") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds; e.g. --timeout 3600")
    return value


class _HelpConfig(argparse.Action):
    """`lorafit train --help-config`: every config field with its default and help (config.describe_fields)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="list every config field with its default and help, then exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from lorafit.config import describe_fields

        print(describe_fields())
        parser.exit()


def add_quantize_option(parser: argparse.ArgumentParser) -> None:
    from lorafit.config import QUANTIZE_CHOICES

    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                        help="int8: dynamic int8 quantization on the CPU, faster but a few predictions may change; "
                             "check it with `lorafit evaluate --quantize int8` (default: none)")


def _global_options(in_subcommand: bool) -> argparse.ArgumentParser:
    """Options taken before or after the subcommand (`lorafit -v train C`, `lorafit train C -v`). The subcommand's
    copies default to SUPPRESS: argparse copies a subparser's defaults over what the top level already read."""
    parent = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if in_subcommand else False
    parent.add_argument("--verbose", "-v", action="store_true", default=default, help="more logging")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lorafit", description="Fit the best text classifier into a trainable-parameter budget with LoRA.",
                     parents=[_global_options(in_subcommand=False)])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    shared = [_global_options(in_subcommand=True)]

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=shared, **kwargs)

    p = add("budget", help="exact trainable-parameter count, from the model config alone",
            epilog="Any config field can be overridden as --section.key value, e.g. --lora.r 8. Exit status 1 when "
                   "the count is over the budget (train would refuse it).")
    p.add_argument("config", nargs="?", type=_path_argument, help="YAML config (optional)")
    p.add_argument("--model", type=_path_argument, help="Hub id or local folder (overrides model.name_or_path)")
    p.add_argument("--target-modules", help="comma-separated module names, e.g. query,value")
    p.add_argument("--r", help="LoRA rank or 'auto'")
    p.add_argument("--num-labels", type=int, help="number of classes (overrides model.num_labels)")
    _add_budget_option(p)
    p.add_argument("--head", choices=["full", "linear", "lora"], help="classifier head (overrides model.head)")
    p.add_argument("--fit", action="store_true", help="also print the largest rank that fits the budget")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_budget, takes_overrides=True)

    p = add("train", help="fine-tune with LoRA into a run folder",
            epilog="Any config field can be overridden as --section.key value, e.g. --train.learning_rate 3e-4")
    p.add_argument("config", type=_path_argument, help="YAML config")
    p.add_argument("--help-config", action=_HelpConfig)
    p.add_argument("--model", type=_path_argument, help="Hub id or local folder (model.name_or_path)")
    p.add_argument("--train-file", type=_path_argument, help="local training file (data.train_file)")
    p.add_argument("--eval-file", type=_path_argument, help="local validation file (data.eval_file)")
    p.add_argument("--output-dir", type=_path_argument, help="folder holding run folders (output_dir)")
    p.add_argument("--name", help="run name (name)")
    _add_budget_option(p)
    p.add_argument("--resume", action="store_true", help="continue the run folder's last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--trust-pickle", action="store_true", default=None,
                   help="allow .pkl data files (data.trust_pickle; unpickling can run code: only files you trust)")
    p.set_defaults(func=cmd_train, takes_overrides=True)

    p = add("evaluate", help="accuracy, macro-F1, per-class scores and confusion matrix of a run")
    p.add_argument("run_dir", type=_path_argument)
    p.add_argument("--data", required=True, type=_path_argument,
                   help="labelled file (.pkl with --trust-pickle), or a Hub split as DATASET_ID:SPLIT or "
                        "DATASET_ID:CONFIG:SPLIT (glue:sst2:validation)")
    p.add_argument("--model", type=_path_argument, help="base model location, if it moved since training")
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickle file (it can run code: only files you trust)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_quantize_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = add("predict", help="write ID,Label predictions for a table of texts")
    p.add_argument("run_dir", type=_path_argument)
    p.add_argument("--input", required=True, type=_path_argument, help=".csv .tsv .jsonl .json .parquet, or .pkl with --trust-pickle")
    p.add_argument("--output", required=True, type=_path_argument, help="CSV to write")
    p.add_argument("--id-column", type=_column_argument, help="column to use as ID (default: row position 0..N-1)")
    p.add_argument("--text-column", type=_column_argument, help="text column (default: the run's text columns, else 'text')")
    p.add_argument("--probabilities", action="store_true", help="add one prob_<class> column per class")
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickle input (it can run code: only for files you trust)")
    p.add_argument("--batch-size", type=int, help="rows per batch (default: the run's train.eval_batch_size; auto = "
                                                 "64 on the CPU, 512 on CUDA; at most 32 with --quantize int8)")
    p.add_argument("--model", type=_path_argument, help="base model location, if it moved since training")
    add_quantize_option(p)
    p.set_defaults(func=cmd_predict)

    p = add("export", help="write a run as a plain transformers model (LoRA merged, no peft needed)")
    p.add_argument("run_dir", type=_path_argument)
    p.add_argument("--output", required=True, type=_path_argument, help="folder to create, e.g. exports/NAME")
    p.add_argument("--model", type=_path_argument, help="base model location, if it moved since training")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_export)

    p = add("sweep", help="run a grid or Optuna search of training runs",
            epilog="Any config field can be overridden for every trial as --section.key value, "
                   "e.g. --train.max_steps 30. Run the same command on several machines with one "
                   "--storage postgresql://... to share the work; rerun it to resume.")
    p.add_argument("sweep", type=_path_argument, help="sweep YAML")
    p.add_argument("--storage", help="Optuna storage URL (default: SQLite inside the sweep folder)")
    p.add_argument("--n-trials", type=_positive_int, help="trials this worker runs at most (the sweep file's search.n_trials bounds the whole study)")
    p.add_argument("--timeout", type=_positive_seconds, help="seconds this worker keeps starting new trials")
    p.add_argument("--model", type=_path_argument, help="override model.name_or_path for every trial")
    p.add_argument("--train-file", type=_path_argument, help="override data.train_file for every trial")
    p.add_argument("--output-dir", type=_path_argument, help="folder that holds the sweep folder")
    _add_budget_option(p)
    p.set_defaults(func=cmd_sweep, takes_overrides=True)

    p = add("report", help="plots and a Markdown table for every run under a folder")
    p.add_argument("dir", type=_path_argument)
    p.add_argument("--out", type=_path_argument, help="output folder (default: DIR/report)")
    p.set_defaults(func=cmd_report)
    return parser


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (a handler made once would keep a stale stream when main() runs again)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _quiet_libraries(verbose: bool) -> None:
    """lorafit's own messages as `lorafit: ...`; the libraries' chatter only with --verbose."""
    ours = logging.getLogger("lorafit")
    if not any(isinstance(h, _CurrentStderrHandler) for h in ours.handlers):  # main() may run many times in-process
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("lorafit: %(message)s"))
        ours.addHandler(handler)
    ours.setLevel(logging.INFO if verbose else logging.WARNING)
    ours.propagate = False
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    import datasets
    from huggingface_hub.utils import logging as hub_logging
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    hub_logging.set_verbosity_error()


def main(argv: Optional[list[str]] = None) -> int:
    try:
        parser = build_parser()
        rest, dotted, missing_value = _split_dotted(list(sys.argv[1:] if argv is None else argv))
        args, extra = parser.parse_known_args(rest)
        if missing_value:
            _missing_value(args, missing_value)
        extra = dotted + extra
        _quiet_libraries(args.verbose)
        return args.func(args, extra)
    except UserError as exc:
        print(f"lorafit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lorafit: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    try:
        code = main()
        sys.stdout.flush()  # inside the try: a reader that left shows here for short outputs
    except BrokenPipeError:
        # `lorafit evaluate RUN --data F | head`: the reader closed the pipe, which is no error of ours, but it was a
        # traceback. Python's documented recipe: stdout to devnull so the exit flush is quiet; 141 as for SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code)


if __name__ == "__main__":
    entry()
