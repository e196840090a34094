"""The ``engage`` command-line program.

Sub-commands: ``run``, ``demo``, ``simulate``, ``profile``, ``forget``, ``rules validate`` (also
``tags validate``), ``replay``, ``report``, ``models``, ``eval-churn``, ``bench``,
``recode-state``. Each exits
non-zero with a one-line reason on bad input or configuration.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from engage.config import Settings

DEFAULT_RECOVERY_DIR = ".engage/recovery"


def _engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka-bootstrap", dest="kafka_bootstrap", help="host:port[,host:port] "
                   "(env ENGAGE_KAFKA_BOOTSTRAP)")
    p.add_argument("--redis-url", dest="redis_url", help="redis://[:password@]host:port/db or "
                   "rediss:// for TLS (env ENGAGE_REDIS_URL)")
    p.add_argument("--metrics-port", dest="metrics_port", type=int,
                   help="port of /metrics, /healthz, /readyz (env ENGAGE_METRICS_PORT; 0 = off)")
    p.add_argument("--workers", type=int, help="Bytewax workers per process")
    p.add_argument("--processes", type=int, help="processes in the cluster; without "
                   "--addresses, started here on loopback ports")
    p.add_argument("--process-id", dest="process_id", type=int, help="this process's index")
    p.add_argument("--addresses", help="host:port of every process of the cluster, in "
                   "process-id order, separated by ';' (with --process-id)")
    p.add_argument("--recovery-dir", dest="recovery_dir",
                   help="Bytewax recovery directory (default .engage/recovery; env ENGAGE_RECOVERY_DIR)")
    p.add_argument("--no-recovery", action="store_true", help="run without crash recovery")
    p.add_argument("--snapshot-interval", dest="snapshot_interval",
                   help="how often state is snapshotted, e.g. 5s")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lateness", help="allowed event lateness, e.g. 5m")
    p.add_argument("--max-future-skew", dest="max_future_skew",
                   help="events further in the future are dead-lettered, e.g. 5m")
    p.add_argument("--rules", help="rule files or directories, separated by ',' "
                   "(env ENGAGE_RULES; default: the shipped catalog)")
    p.add_argument("--kafka-config", dest="kafka_config",
                   help="extra librdkafka settings, k=v,k=v (SASL/SSL pass through here)")


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    flags = {k: v for k, v in vars(args).items() if v is not None}
    flags.update(overrides)
    return Settings.load(flags)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the engine against the configured Kafka and Redis."""
    from engage.runtime import run_engine  # noqa: PLC0415 - keeps `engage profile` quick

    settings = _settings(args)
    if args.no_recovery:
        settings = _settings(args, recovery_dir="")
    elif not settings.recovery_dir:
        settings = _settings(args, recovery_dir=DEFAULT_RECOVERY_DIR)
    if settings.processes > 1 and not settings.addresses:
        from engage.cluster import run_local_cluster  # noqa: PLC0415

        return run_local_cluster(settings, getattr(args, "argv", sys.argv[1:]),
                                 from_end=args.start_from == "end")
    run_engine(settings, stop_at_end=args.stop_at_end, from_end=args.start_from == "end")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Everything on this machine: broker, Redis, storefront, engine, metrics."""
    from engage.demo import run_demo  # noqa: PLC0415

    return run_demo(seconds=args.seconds, rate=args.rate, speed=args.speed,
                    metrics_port=args.metrics_port, customers=args.customers)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Produce simulated storefront events to Kafka, paced by the wall clock; no engine."""
    from engage.simulator.live import simulate  # noqa: PLC0415

    return simulate(_settings(args), rate=args.rate, speed=args.speed, seconds=args.seconds,
                    customers=args.customers, seed=args.seed)


def cmd_profile(args: argparse.Namespace) -> int:
    """Print a customer's merged view from Redis."""
    from engage.profile_view import show_profile  # noqa: PLC0415

    settings = _settings(args)
    if not settings.redis_url:
        print("engage profile: ENGAGE_REDIS_URL is not set (the demo prints the one to use)",
              file=sys.stderr)
        return 2
    return show_profile(settings, args.user_id, as_json=args.json)


def cmd_rules_validate(args: argparse.Namespace) -> int:
    """Check rule files: exit 0 when all are valid, else 1 with every error as file:line: message."""
    from engage.rules.loader import CATALOG_DIR, rule_files, validate  # noqa: PLC0415

    paths = args.paths or [str(CATALOG_DIR)]
    errors = validate(paths)
    for e in errors:
        print(e)
    if errors:
        files = {e.file for e in errors}
        print(f"{len(errors)} error(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    files, _ = rule_files(paths)
    print(f"ok: {len(files)} file(s) valid", file=sys.stderr)
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Erase a customer and their linked devices everywhere; records that it happened."""
    from engage.forget import forget  # noqa: PLC0415

    try:
        record = forget(_settings(args), args.user_id)
    except ValueError as exc:
        print(f"engage forget: {exc}", file=sys.stderr)
        return 2
    print(f"erased: {record['keys_removed']} key(s) removed now; request {record['request_id']} "
          "sent to the engine (it drops what it holds and ignores the customer's events from "
          "now on); recorded in engage:erasures")
    return 0


def cmd_recode_state(args: argparse.Namespace) -> int:
    """Rewrite every stored state document with a codec (before a rollback, or to compress old ones)."""
    from engage.connectors.redis_store import connect, recode  # noqa: PLC0415

    settings = _settings(args)
    if not settings.redis_url:
        print("engage recode-state: ENGAGE_REDIS_URL (or --redis-url) must be set",
              file=sys.stderr)
        return 2
    done = recode(connect(settings.redis_url), args.codec)
    print(f"{done['seen']} document(s): {done['rewritten']} rewritten as {args.codec}, "
          f"{done['unchanged']} already so (or rewritten by the engine meanwhile)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Show the churn and repurchase models (versions, labels, progressive AUC and log loss),
    or reset, pin or unpin them in the running engine."""
    import orjson  # noqa: PLC0415

    from engage import model_admin  # noqa: PLC0415

    try:
        settings = _settings(args)
        if args.op:
            if not args.model:
                print("engage models: name the model: churn_risk, repurchase_30d or all",
                      file=sys.stderr)
                return 2
            request = model_admin.command(settings, args.model, args.op)
            print(f"{args.op} {args.model}: request {request} sent to the engine (every customer "
                  "shard applies it; `engage models` shows the new version within seconds)")
            return 0
        view = model_admin.status(settings)
    except ValueError as exc:
        print(f"engage models: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() if args.json
          else model_admin.render(view))
    return 0


def cmd_eval_churn(args: argparse.Namespace) -> int:
    """Replay a customer_id,date,amount[,quantity] log through the churn and repurchase models;
    print progressive AUC and log loss beside a recency baseline."""
    from engage.eval_churn import config_for, run  # noqa: PLC0415
    from engage.state.windows import parse_duration  # noqa: PLC0415

    try:
        cfg = config_for(args.models, parse_duration(args.horizon) if args.horizon else None,
                         parse_duration(args.sample_every) if args.sample_every else None)
    except ValueError as exc:
        print(f"engage eval-churn: {exc}", file=sys.stderr)
        return 2
    return run(args.transactions, cfg, sys.stdout, sys.stderr, args.json)


def cmd_replay(args: argparse.Namespace) -> int:
    """Run the engine over a JSON-lines file of events and print what it would do; sends nothing."""
    from engage.replay import main as replay_main  # noqa: PLC0415

    return replay_main(args.events, args.rules, args.json, sys.stdout)


def cmd_report(args: argparse.Namespace) -> int:
    """Conversions, uplift and suppressions per rule and variant: from the engine's topics,
    or from JSON-lines files."""
    from engage.report import main as report_main  # noqa: PLC0415

    paths = (args.actions or []) + (args.audit or []) + (args.conversions or [])
    if paths:
        return report_main(paths, args.since, args.rules, args.format, sys.stdout, args.basis)
    settings = _settings(args)
    bootstrap = settings.kafka_bootstrap
    if not bootstrap:
        raise ValueError("give --actions, --audit or --conversions files, or point "
                         "ENGAGE_KAFKA_BOOTSTRAP (--kafka-bootstrap) at the engine's Kafka to "
                         "read engage.actions, engage.audit and engage.conversions")
    from engage.report import read_topics  # noqa: PLC0415

    return report_main([], args.since, args.rules, args.format, sys.stdout, args.basis,
                       docs=read_topics(bootstrap, kafka_config=settings.kafka_config))


def cmd_bench(args: argparse.Namespace) -> int:
    """Throughput of the pipeline beside a per-event baseline and the raw consume rate."""
    if args.scale:
        from engage.benchmarks.scale import main as scale_main, parse_shapes  # noqa: PLC0415

        return scale_main(parse_shapes(args.scale), events=args.events, customers=args.customers,
                          write=args.write, repeat=args.repeat,
                          use_configured=args.use_configured)
    from engage.benchmarks.bench import main as bench_main  # noqa: PLC0415

    return bench_main(events=args.events, customers=args.customers, write=args.write,
                      repeat=args.repeat, with_models=not args.no_models,
                      use_configured=args.use_configured)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="engage", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help=cmd_run.__doc__)
    _engine_flags(run)
    run.add_argument("--stop-at-end", dest="stop_at_end", action="store_true",
                     help="stop once the input topic is read to the end it had at start")
    run.add_argument("--backfill", action="store_true", default=None,
                     help="rebuild state from history without deciding or sending anything")
    run.add_argument("--start-from", dest="start_from", choices=("beginning", "end"),
                     default="beginning",
                     help="where a new deployment starts reading (default: beginning)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help=cmd_demo.__doc__)
    demo.add_argument("--seconds", type=float, default=60.0, help="stop after this long (default 60)")
    demo.add_argument("--rate", type=float, default=300.0, help="storefront events per second")
    demo.add_argument("--speed", type=float, default=7200.0,
                      help="event time runs this many times faster than the wall clock "
                           "(default 7200: two hours a second, so 24 h carts fire in the demo)")
    demo.add_argument("--customers", type=int, default=400)
    demo.add_argument("--metrics-port", dest="metrics_port", type=int, default=None)
    demo.set_defaults(func=cmd_demo)

    simulate = sub.add_parser("simulate", help=cmd_simulate.__doc__)
    simulate.add_argument("--rate", type=float, default=50.0, help="events per second (default 50)")
    simulate.add_argument("--speed", type=float, default=1.0,
                          help="event time runs this many times faster than the wall clock "
                               "(default 1: events are stamped now)")
    simulate.add_argument("--seconds", type=float, default=0.0,
                          help="stop after this long (default 0: until SIGINT/SIGTERM)")
    simulate.add_argument("--customers", type=int, default=1000)
    simulate.add_argument("--seed", type=int, default=None,
                          help="storefront seed (default: the start time, so ids never repeat)")
    simulate.add_argument("--kafka-bootstrap", dest="kafka_bootstrap",
                          help="host:port[,host:port] (env ENGAGE_KAFKA_BOOTSTRAP)")
    simulate.add_argument("--kafka-config", dest="kafka_config",
                          help="extra librdkafka settings, k=v,k=v (env ENGAGE_KAFKA_CONFIG)")
    simulate.set_defaults(func=cmd_simulate)

    profile = sub.add_parser("profile", help=cmd_profile.__doc__)
    profile.add_argument("user_id", help="customer id (or a device id linked to one)")
    profile.add_argument("--json", action="store_true", help="machine-readable output")
    profile.add_argument("--redis-url", dest="redis_url")
    profile.set_defaults(func=cmd_profile)

    # Tag definitions live in the same files as rules: one validator serves both names.
    for name, what in (("rules", "rule files"), ("tags", "tag definitions (in rule files)")):
        group = sub.add_parser(name, help=f"work with {what}")
        group_sub = group.add_subparsers(dest=f"{name}_command", required=True)
        validate = group_sub.add_parser("validate", help=cmd_rules_validate.__doc__)
        validate.add_argument("paths", nargs="*", metavar="PATH",
                              help="rule files or directories (default: the shipped catalog)")
        validate.set_defaults(func=cmd_rules_validate)

    forget = sub.add_parser("forget", help=cmd_forget.__doc__)
    forget.add_argument("user_id", help="the customer id")
    forget.add_argument("--redis-url", dest="redis_url")
    forget.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    forget.set_defaults(func=cmd_forget)

    recode_state = sub.add_parser("recode-state", help=cmd_recode_state.__doc__)
    recode_state.add_argument("--codec", required=True, choices=("json", "zstd"),
                              help="json: readable by any version (do this before rolling back "
                                   "to one that predates the zstd codec); zstd: the default")
    recode_state.add_argument("--redis-url", dest="redis_url")
    recode_state.set_defaults(func=cmd_recode_state)

    models = sub.add_parser("models", help=cmd_models.__doc__)
    models.add_argument("op", nargs="?", choices=("reset", "pin", "unpin"),
                        help="reset: forget what was learnt (new generation); pin: keep scoring, "
                             "stop learning; unpin: learn again")
    models.add_argument("model", nargs="?", help="churn_risk, repurchase_30d or all")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.add_argument("--redis-url", dest="redis_url")
    models.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    models.set_defaults(func=cmd_models)

    evaluate = sub.add_parser("eval-churn", help=cmd_eval_churn.__doc__)
    evaluate.add_argument("--transactions", required=True, metavar="FILE.csv",
                          help="a customer_id,date,amount[,quantity] log with a header row")
    evaluate.add_argument("--models", default="logreg,tree",
                          help="model kinds to compare, the first as the one shown "
                               "(logreg, tree, forest; default logreg,tree)")
    evaluate.add_argument("--horizon", help="churn horizon (default 90d)")
    evaluate.add_argument("--sample-every", dest="sample_every",
                          help="a customer becomes an example at most this often, and is scored "
                               "this often while quiet (default 14d)")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(func=cmd_eval_churn)

    replay = sub.add_parser("replay", help=cmd_replay.__doc__)
    replay.add_argument("--events", required=True, metavar="FILE",
                        help="contract events, one JSON object per line")
    replay.add_argument("--rules", metavar="PATH",
                        help="rule files or directories, ',' separated (default: ENGAGE_RULES, "
                             "else the shipped catalog)")
    replay.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    replay.set_defaults(func=cmd_replay)

    report = sub.add_parser("report", help=cmd_report.__doc__)
    for flag, what in (("--actions", "action docs (engage.actions, or engage replay --json)"),
                       ("--audit", "audit docs (engage.audit)"),
                       ("--conversions", "conversion records")):
        report.add_argument(flag, action="append", metavar="FILE",
                            help=f"JSON lines of {what}; repeatable")
    report.add_argument("--kafka-bootstrap", dest="kafka_bootstrap",
                        help="read the engine's topics there when no file is given "
                             "(default: ENGAGE_KAFKA_BOOTSTRAP)")
    report.add_argument("--since", help="touches from this ISO date/time, or a duration (30d) "
                                        "back from the newest touch")
    report.add_argument("--rules", help="only these rule ids, ',' separated")
    report.add_argument("--format", choices=["text", "json", "html"], default="text")
    report.add_argument("--basis", choices=["last_touch", "window"], default="last_touch",
                        help="converted = credited with the order (default), or any order "
                             "in the window")
    report.set_defaults(func=cmd_report)

    bench = sub.add_parser("bench", help=cmd_bench.__doc__)
    bench.add_argument("--events", type=int, default=300_000)
    bench.add_argument("--customers", type=int, default=20_000)
    bench.add_argument("--repeat", type=int, default=1, help="runs of each measurement (best kept)")
    bench.add_argument("--write", metavar="FILE", help="write the result table (markdown) here")
    bench.add_argument("--no-models", dest="no_models", action="store_true",
                       help="skip the churn models' cost (a second, year-long corpus)")
    bench.add_argument("--scale", metavar="WxP,...",
                       help="instead: the engine by workers per process x processes, "
                            "e.g. 1x1,2x1,1x2,2x2 (each as `engage run --stop-at-end`)")
    bench.add_argument("--use-configured", dest="use_configured", action="store_true",
                       help="measure on ENGAGE_KAFKA_BOOTSTRAP and ENGAGE_REDIS_URL instead of an "
                            "embedded stack: writes to engage.events and EMPTIES that Redis database")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``engage`` program."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Kept for `run --processes`, which starts members with the same command line.
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"engage {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
