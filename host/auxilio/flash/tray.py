"""`auxilio flash`: one board or a whole tray in parallel, with a report row per board.

Everything that can be checked without a board is checked first (board
files, images, the application build). Then every port gets its own thread
(the work waits on serial links, not on the CPU), one failing board never
stops the others, and a Ctrl-C stops every board, marks each one
interrupted, and still writes the report. Boards whose latest report says
they were flashed with this image are skipped unless `force`.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from auxilio.boards import Board
from auxilio.flash import report
from auxilio.flash.deploy import AppBundle, bundle
from auxilio.flash.flasher import BoardFlasher, Options, Outcome
from auxilio.flash.images import FirmwareInfo
from auxilio.flash.ports import Port

log = logging.getLogger(__name__)

MAX_PARALLEL = 32  # threads flashing at once (USB hubs rarely hold more)
ABORT_WAIT_S = 30.0  # after Ctrl-C, how long boards get to notice and stop


@dataclass
class Item:
    """One port of the run and what may be flashed on it."""

    port: Port
    choices: list[tuple[Board, FirmwareInfo]]
    explicit: bool  # named with --port (a wrong chip is a failure, not a skip)
    skip: str = ""  # why it is not flashed this time


@dataclass
class TrayResult:
    outcomes: list[Outcome]
    csv: Path | None = None
    json: Path | None = None
    interrupted: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result in ("failed", "interrupted")]


def plan(
    ports: list[Port],
    choices: list[tuple[Board, FirmwareInfo]],
    *,
    explicit: bool,
    force: bool,
    reports_dir: Path | None = None,
) -> list[Item]:
    """Match ports to boards and drop the ones already done (by the report history)."""
    history = {} if force else report.last_flash(reports_dir)
    items = []
    for port in ports:
        cands = choices if explicit else [(b, fw) for b, fw in choices if port.matches(b)]
        item = Item(port, cands, explicit)
        if not cands:
            item.skip = f"{port.label()}: not a {' or '.join(b.name for b, _ in choices)} port"
        prev = history.get(port.key)
        if prev and prev.get("result") == "ok":
            for b, fw in cands:
                if prev.get("board") == b.name and prev.get("image_sha256") == fw.sha256:
                    item.skip = f"already flashed with this image ({prev.get('report')}); --force to flash it again"
        items.append(item)
    return items


def run(
    items: list[Item],
    options: Options,
    *,
    on_progress: Callable[[Item, str, int, int], None] | None = None,
    on_done: Callable[[Item, Outcome], None] | None = None,
    reports_dir: Path | None = None,
    meta: dict[str, Any] | None = None,
    parallel: int = MAX_PARALLEL,
) -> TrayResult:
    """Flash every item (in parallel), write the report, return the outcomes in item order."""
    outcomes: dict[int, Outcome] = {}
    flashers: dict[int, BoardFlasher] = {}
    started = time.time()
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="auxilio-app-") as tmp:
        apps: dict[str, AppBundle] = {}
        if options.deploy:
            for item in items:
                for b, _fw in item.choices:
                    if b.name not in apps and not item.skip:
                        apps[b.name] = bundle(b, Path(tmp) / b.name, options.frozen)
        for i, item in enumerate(items):
            if item.skip:
                o = Outcome(
                    port=item.port.device,
                    serial=item.port.serial,
                    result="skipped",
                    error=item.skip,
                )
                outcomes[i] = o
                if on_done:
                    on_done(item, o)
                continue

            def progress(stage: str, done: int, total: int, item: Item = item) -> None:
                if on_progress:
                    on_progress(item, stage, done, total)

            flashers[i] = BoardFlasher(
                item.port, item.choices, apps, options, progress, item.explicit
            )
        done_lock = threading.Lock()

        def work(i: int) -> None:
            o = flashers[i].run()
            with done_lock:
                outcomes[i] = o
            if on_done:
                on_done(items[i], o)

        pool = ThreadPoolExecutor(
            max_workers=max(1, min(parallel, len(flashers) or 1)), thread_name_prefix="flash"
        )
        futures = [pool.submit(work, i) for i in flashers]
        try:
            for f in futures:
                while not f.done():
                    time.sleep(0.05)  # a short wait keeps Ctrl-C responsive
        except KeyboardInterrupt:
            interrupted = True
            for fl in flashers.values():
                fl.abort()
            deadline = time.monotonic() + ABORT_WAIT_S
            for f in futures:
                while not f.done() and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
    for i, fl in flashers.items():
        if i not in outcomes:  # did not stop in time: say so, never "ok"
            o = fl.outcome
            o.result, o.error = "interrupted", o.error or "interrupted"
            outcomes[i] = o
    ordered = [outcomes[i] for i in range(len(items))]
    info = dict(meta or {})
    info.update(started=started, finished=time.time(), interrupted=interrupted)
    rows = [asdict(o) for o in ordered]
    csv_path, json_path = report.write("flash", rows, report.FLASH_COLUMNS, info, reports_dir)
    return TrayResult(ordered, csv_path, json_path, interrupted, info)


def refused(ports: list[Port], error: str, reports_dir: Path | None = None) -> TrayResult:
    """A run stopped before touching any board (bad image, unknown board): a failed row per port."""
    outcomes = [
        Outcome(port=p.device, serial=p.serial, result="failed", error=f"not flashed: {error}")
        for p in ports
    ]
    info = {"started": time.time(), "finished": time.time(), "refused": error}
    csv_path, json_path = report.write(
        "flash", [asdict(o) for o in outcomes], report.FLASH_COLUMNS, info, reports_dir
    )
    return TrayResult(outcomes, csv_path, json_path, False, info)
