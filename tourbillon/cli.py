"""The ``tourbillon`` command line.

Only this module prints. Errors about the user's input (a
:class:`~tourbillon.errors.TourbillonError`) are shown as one line and exit
with status 2; an interrupted run keeps every finished epoch on disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from .config import VARIANTS, Config, field_names, parse_overrides, resolve
from .errors import ConfigError, TourbillonError
from .probe import PROBE_EPOCHS

RECORD_MODES = ("off", "default", "full")


# -- shared options -------------------------------------------------------------------


def _add_config_options(p: argparse.ArgumentParser, variant_default: str) -> None:
    p.add_argument("--variant", default=variant_default, metavar="NAME",
                   help=f"named variant ({', '.join(VARIANTS)}); "
                   f"default {variant_default}")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="FIELD=VALUE", help="override a config field (repeatable)")
    _add_data_options(p)
    p.add_argument("--epochs", type=int, help="epochs (per block when sequential)")
    p.add_argument("--seed", type=int, help="random seed")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="mnist-sample (default, offline), mnist, "
                   "fashion-mnist or cifar10")
    p.add_argument("--data-dir", default="data", help="where full data sets live")
    p.add_argument("--download", action="store_true",
                   help="download a missing full data set (needs network)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--eval-every", type=int, default=1, metavar="N",
                   help="evaluate every N epochs (the last epoch always is)")
    p.add_argument("--probe-epochs", type=int, default=PROBE_EPOCHS, metavar="N",
                   help=f"epochs of each linear probe (default {PROBE_EPOCHS}); "
                   "0 skips probes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> Config:
    """The resolved config: variant, then ``--set``, then the shortcut flags."""
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    for name in ("epochs", "seed", "dataset"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return resolve(args.variant, overrides)


def load_data_for(config: Config, args: argparse.Namespace):
    """The data set a config names, in the layout its architecture needs."""
    from .data import load_dataset
    return load_dataset(config.dataset, root=args.data_dir, download=args.download,
                        flat=config.arch == "linear")


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _epoch_line(m: dict[str, Any]) -> str:
    return (f"epoch {m['epoch']:3d}  loss {_fmt(m.get('train_loss'), '.4g')}  "
            f"recon {_fmt(m.get('test_recon_mse'))}  "
            f"acc {_fmt(m.get('test_accuracy'), '.3f')}  "
            f"probe {_fmt(m.get('probe_accuracy'), '.3f')}  {m['seconds']:.1f}s"
            + ("  DIVERGED" if m.get("diverged") else ""))


def _printer():
    from .train import Callback

    class PrintEpochs(Callback):
        def on_epoch_end(self, trainer, metrics):
            print(_epoch_line(metrics), flush=True)

    return PrintEpochs()


def _recorder(mode: str, run_dir: Path) -> list:
    if mode not in RECORD_MODES:
        raise ConfigError(f"--record must be one of {', '.join(RECORD_MODES)}")
    if mode == "off":
        return []
    from diagnostics.recorder import TrainerRecorder
    return [TrainerRecorder(run_dir, mode)]


def run_name(config: Config) -> str:
    """Default run directory name: the variant and seed."""
    return f"{config.name}-s{config.seed}"


# -- commands -------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .train import Trainer

    config = config_from_args(args)
    run_dir = Path(args.out) if args.out else Path(args.logdir) / run_name(config)
    data = load_data_for(config, args)
    trainer = Trainer(config, data, run_dir, eval_every=args.eval_every,
                      probe_epochs=args.probe_epochs, device=args.device,
                      progress=not args.quiet,
                      callbacks=[_printer(), *_recorder(args.record, run_dir)])
    print(f"training {config.name} on {config.dataset} -> {run_dir}", flush=True)
    try:
        history = trainer.fit(resume=args.resume)
    except KeyboardInterrupt:
        print(f"interrupted at epoch {trainer.epoch}; finished epochs are in {run_dir} "
              "(continue with --resume)", file=sys.stderr)
        return 130
    if trainer.diverged:
        print(f"diverged at epoch {trainer.epoch}: non-finite loss", file=sys.stderr)
        return 3
    last = history[-1] if history else {}
    print(f"done: recon {_fmt(last.get('test_recon_mse'))}  "
          f"acc {_fmt(last.get('test_accuracy'), '.3f')}  "
          f"probe {_fmt(last.get('probe_accuracy'), '.3f')}  -> {run_dir}")
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    base = Config().to_dict()
    if args.fields:
        for name in field_names():
            print(f"{name} = {json.dumps(base[name])}")
        return 0
    for name, variant in VARIANTS.items():
        print(f"{name}")
        print(_wrap(variant.source, "    "))
        changed = {k: v for k, v in variant.config().to_dict().items()
                   if v != base[k] and k != "name"}
        if changed:
            print(_wrap("fields: " + ", ".join(f"{k}={json.dumps(v)}"
                                               for k, v in changed.items()), "    "))
        else:
            print("    fields: the defaults (tourbillon variants --fields)")
    return 0


def _wrap(text: str, indent: str) -> str:
    import textwrap
    return textwrap.fill(text, 88, initial_indent=indent, subsequent_indent=indent)


def cmd_compare(args: argparse.Namespace) -> int:
    """Train several variants on the same data and print their figures side by side."""
    from .train import Trainer

    rows = []
    for name in args.variants:
        config = resolve(name, parse_overrides(args.overrides))
        if args.epochs is not None:
            config = config.replace(epochs=args.epochs)
        if args.dataset is not None:
            config = config.replace(dataset=args.dataset)
        run_dir = Path(args.logdir) / run_name(config)
        print(f"training {name} -> {run_dir}", flush=True)
        trainer = Trainer(config, load_data_for(config, args), run_dir,
                          eval_every=max(config.epochs, 1), progress=not args.quiet,
                          callbacks=[_printer()])
        last = trainer.fit()[-1]
        rows.append((name, config.epochs, last))
    print()
    print(f"{'variant':<14}{'epochs':>7}{'recon MSE':>11}{'accuracy':>10}{'probe':>8}")
    for name, epochs, m in rows:
        print(f"{name:<14}{epochs:>7}{_fmt(m.get('test_recon_mse')):>11}"
              f"{_fmt(m.get('test_accuracy'), '.3f'):>10}"
              f"{_fmt(m.get('probe_accuracy'), '.3f'):>8}")
    return 0


def parse_spec(spec: str, overrides: list[str] = ()) -> Config:
    """A config from ``"[VARIANT] [field=value ...]"`` (variant default: reference)."""
    tokens = spec.split()
    variant = "reference"
    if tokens and "=" not in tokens[0]:
        variant = tokens.pop(0)
    return resolve(variant, parse_overrides([*tokens, *overrides]))


def _subject(label: str, spec: str, overrides: list[str], args: argparse.Namespace):
    from diagnostics.diagnose import Subject

    shared = {"dataset": args.dataset} if args.dataset else {}
    if ":" in spec and "=" not in spec.split(":")[0]:
        from diagnostics.user_model import load_factory, recipe_config
        return Subject(label, recipe_config(spec, **shared), load_factory(spec), spec)
    return Subject(label, parse_spec(spec, overrides).replace(**shared), None, spec)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {text!r}") \
            from None


def _progress_printer(quiet: bool):
    def say(stage: str, detail: str) -> None:
        print(f"[{stage}] {detail}", flush=True)
    return None if quiet else say


def _summary(diagnosis) -> None:
    print(f"verdict: {diagnosis.verdict['verdict']}")
    for reason in diagnosis.verdict["reasons"]:
        print(f"  - {reason}")
    for cause in diagnosis.causes[:3]:
        low, high = cause["ci"]
        print(f"cause {cause['rank']}: {cause['axis']} {json.dumps(cause['from'])} -> "
              f"{json.dumps(cause['to'])}: {cause['metric']} {cause['effect']:+.4f} "
              f"[{low:+.4f}, {high:+.4f}]")
    failing = [f for f in diagnosis.findings if f.get("subject") == "failing"]
    print(f"findings: {len(failing)} on the failing run "
          f"({', '.join(sorted({f['rule'] for f in failing})) or 'none'})")
    print(f"report: {diagnosis.report}")
    print(f"findings.json: {diagnosis.findings_json}")


def cmd_diagnose(args: argparse.Namespace) -> int:
    from diagnostics.diagnose import DiagnoseOptions, diagnose

    failing = _subject("failing", args.model or args.failing, args.set_failing, args)
    working = None
    against = args.against if args.model else (args.against or args.working)
    if against:
        working = _subject("working", against, args.set_working, args)
    options = DiagnoseOptions(
        epochs=args.epochs, seeds=_seeds(args.seeds), workers=args.workers,
        record=args.record, probe_epochs=args.probe_epochs, out=Path(args.out),
        max_train=args.max_train, max_test=args.max_test, data_root=args.data_dir,
        download=args.download)
    with warnings.catch_warnings(record=True) as caught:
        # What the recorder could not measure goes to the report; here a count.
        warnings.filterwarnings("always", message="recorder: ")
        diagnosis = diagnose(failing, working, options, command=sys.argv,
                             progress=_progress_printer(args.quiet))
    _summary(diagnosis)
    _reprint_other_warnings(caught)
    return 0


def _reprint_other_warnings(caught: list) -> None:
    recorder = {str(w.message) for w in caught
                if str(w.message).startswith("recorder: ")}
    if recorder:
        print(f"not measured: {len(recorder)} quantities (listed in the report)")
    for w in caught:
        if not str(w.message).startswith("recorder: "):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def cmd_ablate(args: argparse.Namespace) -> int:
    from diagnostics.ablation import load_grid, run_ablation, run_grid

    common = dict(epochs=args.epochs, seeds=_seeds(args.seeds), workers=args.workers,
                  record=args.record, probe_epochs=args.probe_epochs,
                  max_train=args.max_train, max_test=args.max_test,
                  data_root=args.data_dir, progress=not args.quiet)
    if args.grid:
        grid = load_grid(args.grid)
        result = run_grid(grid["base"], grid["grid"], args.out, **common)
    else:
        result = run_ablation(parse_spec(args.failing, args.set_failing),
                              parse_spec(args.working, args.set_working), args.out,
                              **common)
    for cause in result.causes:
        low, high = cause["ci"]
        print(f"{cause['rank']}. {cause['axis']}: {cause['metric']} "
              f"{cause['effect']:+.4f} [{low:+.4f}, {high:+.4f}]")
    print(f"results: {result.out_dir}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from diagnostics.diagnose import rebuild_report

    diagnosis = rebuild_report(args.runs_dir, args.out, command=sys.argv)
    _summary(diagnosis)
    return 0


def _add_sweep_options(p: argparse.ArgumentParser, epochs: int, seeds: str) -> None:
    p.add_argument("--epochs", type=int, default=epochs,
                   help=f"epochs of every run (default {epochs})")
    p.add_argument("--seeds", default=seeds, help=f"comma-separated seeds ({seeds})")
    p.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    p.add_argument("--record", default="default", choices=RECORD_MODES,
                   help="recorder mode of every run")
    p.add_argument("--probe-epochs", type=int, default=10, metavar="N",
                   help="epochs of each linear probe")
    p.add_argument("--max-train", type=int,
                   help="use only the first N training examples")
    p.add_argument("--max-test", type=int, help="use only the first N test examples")
    p.add_argument("--set-failing", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--set-working", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--quiet", action="store_true", help="no progress output")


# -- entry point -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tourbillon",
        description="Train Tourbillon variants and diagnose why training stalls.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one variant")
    _add_config_options(p, "reference")
    _add_run_options(p)
    p.add_argument("--out", help="run directory (default: LOGDIR/VARIANT-sSEED)")
    p.add_argument("--logdir", default="runs", help="parent of run directories")
    p.add_argument("--record", default="default", choices=RECORD_MODES,
                   help="recording schedule for TensorBoard (default: default)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run directory's checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("variants", help="list the named variants and their fields")
    p.add_argument("--fields", action="store_true", help="list every field's default")
    p.set_defaults(func=cmd_variants)

    p = sub.add_parser("compare", help="train variants and print figures side by side")
    p.add_argument("variants", nargs="*", default=["reference", "authors"],
                   metavar="VARIANT")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="FIELD=VALUE", help="override a field in every variant")
    p.add_argument("--epochs", type=int, help="epochs for every variant")
    _add_data_options(p)
    p.add_argument("--logdir", default="runs", help="parent of run directories")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("diagnose", help="the whole diagnosis: train, record, detect, "
                       "ablate, report")
    p.add_argument("--failing", default="reference", metavar="SPEC",
                   help="failing config: 'VARIANT [field=value ...]' (reference)")
    p.add_argument("--working", default="authors", metavar="SPEC",
                   help="working config to compare and ablate against (authors)")
    p.add_argument("--model", metavar="PKG.MODULE:FACTORY",
                   help="diagnose your own protocol model instead of --failing")
    p.add_argument("--against", metavar="SPEC|PKG.MODULE:FACTORY",
                   help="with --model: a working config or factory (no comparison "
                   "without it)")
    _add_data_options(p)
    _add_sweep_options(p, epochs=2, seeds="0,1,2")
    p.add_argument("--out", default=".", help="parent of runs/ and reports/ (.)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("ablate", help="measure which differences make a config fail")
    p.add_argument("--failing", default="reference", metavar="SPEC")
    p.add_argument("--working", default="authors", metavar="SPEC")
    p.add_argument("--grid", metavar="TOML", help="cross the values of a TOML grid "
                   "instead")
    _add_data_options(p)
    _add_sweep_options(p, epochs=2, seeds="0,1,2")
    p.add_argument("--out", default="runs/ablation", help="sweep directory")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("report", help="rebuild the report from a diagnosis's runs")
    p.add_argument("runs_dir", help="the runs/ folder of a diagnosis")
    p.add_argument("--out", help="where reports/ goes (default: beside RUNS_DIR)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except TourbillonError as error:
        print(f"tourbillon {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
