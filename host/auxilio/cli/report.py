"""`auxilio report`: the programme office's figures (alerts by month and outcome, attend times, devices).

Reads the registry read-only. Text for people, --json or --csv (the monthly
table) for machines and spreadsheets. Definitions: auxilio/console/report.py
and the README.
"""

from __future__ import annotations

import argparse

from auxilio.i18n import _


def add_arguments(p: argparse.ArgumentParser) -> None:
    from auxilio.console.report import DEFAULT_LOW_BATTERY, DEFAULT_SILENT_DAYS

    p.add_argument(
        "--from",
        dest="start",
        metavar="DATE",
        help=_(
            "primer día, AAAA-MM-DD o AAAA-MM, hora local (por omisión: 11 meses antes de este)"
        ),
    )
    p.add_argument(
        "--to",
        dest="end",
        metavar="DATE",
        help=_("último día, AAAA-MM-DD o AAAA-MM (por omisión: hoy)"),
    )
    p.add_argument(
        "--silent-days",
        type=int,
        default=DEFAULT_SILENT_DAYS,
        metavar="N",
        help=_(
            "lista los dispositivos asignados sin señal desde hace más de N días (por omisión {n})"
        ).format(n=DEFAULT_SILENT_DAYS),
    )
    p.add_argument(
        "--low-battery",
        type=int,
        default=DEFAULT_LOW_BATTERY,
        metavar="PCT",
        help=_(
            "lista los dispositivos cuya última batería está por debajo de PCT %% (por omisión {n})"
        ).format(n=DEFAULT_LOW_BATTERY),
    )
    p.add_argument(
        "--registry",
        default=None,
        help=_("ruta o URL del registro (por omisión $AUXILIO_REGISTRY)"),
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help=_("el informe completo en JSON"))
    out.add_argument("--csv", action="store_true", help=_("la tabla mensual en CSV"))


def run(args: argparse.Namespace) -> int:
    import json

    from auxilio.console import report
    from auxilio.console.outcomes import open_readonly

    start = report.parse_day(args.start)
    end = report.parse_day(args.end, end=True)
    with open_readonly(args.registry) as registry:
        rep = report.build(registry, start, end, args.silent_days, args.low_battery)
    if args.json:
        print(json.dumps(rep, sort_keys=True))
    elif args.csv:
        print(report.to_csv(rep), end="")
    else:
        report.print_report(rep)
    return 0
