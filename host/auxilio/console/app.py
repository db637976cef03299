"""The live operator console (Textual): the dispatch queue, the selected alert in full, events, keys.

Layout, from the top: one summary line (now with its offset, alerts waiting,
overdue, supervision lost, forwarding failing); the alerts (unattended first,
the oldest press first, then the latest attended or closed); the selected
alert in full (case or site, times with the offset, location with accuracy
and fix age, map link, attend and outcome); events, or devices with `d`; one
message line; the keys. At 80x24 the essential columns fit; from
view.WIDE_COLUMNS on, device, kind, accuracy, battery, bearer and press time
are added.

The console reads the registry read-only. `a` asks the gateway to attend
(gateway.control.request_attend); a row turns "atendiendo" only once the
gateway signed the ACK and the broker took it (issue 8 §4). `c` closes the
selected alert with an outcome through the narrow writer (console.outcomes).
The selection follows the alert, not the row: a new alert arriving never
moves the cursor onto another alert, so `a` always acts on what is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from auxilio.console import view
from auxilio.console.outcomes import NOTE_MAX, OUTCOMES, Closer, outcome_word
from auxilio.errors import AuxilioError
from auxilio.i18n import _

log = logging.getLogger(__name__)

# How often the console reads the registry (each read is a few bounded queries).
REFRESH_S = 1.0
# Padding DataTable puts around each cell (one column each side), and room kept for the scrollbar.
_CELL_PAD = 2
_SCROLLBAR = 0  # none reserved: when rows overflow, the last column gives way


class CloseScreen(ModalScreen[tuple[str, str] | None]):
    """Choose an outcome (and a note) for one alert; dismisses with (outcome, note) or None."""

    BINDINGS = [Binding("escape", "cancel", _("Cancelar"))] + [
        Binding(str(i + 1), f"pick({i})", show=False) for i in range(len(OUTCOMES))
    ]
    DEFAULT_CSS = """
    CloseScreen { align: center middle; }
    #dialog { width: 76; height: auto; border: thick $error; background: $surface; padding: 0 1; }
    #dialog .warn { color: $warning; text-style: bold; }
    #outcome { height: auto; max-height: 6; }
    """

    def __init__(self, alert: dict[str, Any]) -> None:
        super().__init__()
        self.alert = alert
        self.outcome: str | None = None

    def compose(self) -> ComposeResult:
        a, out = self.alert, self.alert["outcome"]
        with Vertical(id="dialog"):
            if out is None:
                title = _("Cerrar alerta {id} ({who})").format(id=a["id"], who=view.origin(a))
            else:
                title = _("Corregir el cierre de la alerta {id}: ahora «{o}» ({op})").format(
                    id=a["id"], o=outcome_word(out["outcome"]), op=out["operator"]
                )
            yield Static(Text(title, style="bold"))
            if a["attending_at"] is None:
                yield Static(
                    _(
                        "No atendida: la usuaria no ha recibido el aviso de ayuda. Se registrará así."
                    ),
                    classes="warn",
                )
            yield OptionList(
                *[
                    Option(f"{i + 1}  {outcome_word(code)}", id=code)
                    for i, code in enumerate(OUTCOMES)
                ],
                id="outcome",
            )
            yield Input(
                placeholder=_("Nota (opcional, nunca un nombre)"), max_length=NOTE_MAX, id="note"
            )
            yield Static(
                _("↑/↓ o 1-4 elegir · Intro pasa a la nota · Intro confirma · Esc cancela"),
                classes="help",
            )

    def on_mount(self) -> None:
        self.query_one("#outcome", OptionList).focus()

    def action_pick(self, index: int) -> None:
        options = self.query_one("#outcome", OptionList)
        options.highlighted = index
        self._chosen(OUTCOMES[index])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self._chosen(str(event.option.id))

    def _chosen(self, code: str) -> None:
        self.outcome = code
        self.query_one("#note", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.outcome is None:
            self.notify(_("elija un resultado (1-4)"))
            self.query_one("#outcome", OptionList).focus()
            return
        self.dismiss((self.outcome, event.value))

    def action_cancel(self) -> None:
        self.dismiss(None)


class MonitorApp(App[None]):
    """`auxilio monitor`: read the registry every REFRESH_S, attend through the gateway, close."""

    TITLE = "Auxilio C4"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("a", "attend", _("Atender")),
        Binding("c", "close_alert", _("Cerrar")),
        Binding("d", "toggle_lower", _("Dispositivos/eventos")),
        Binding("r", "refresh", _("Refrescar")),
        Binding("q", "quit", _("Salir")),
        Binding("j", "move(1)", show=False),
        Binding("k", "move(-1)", show=False),
    ]
    CSS = """
    #summary { height: 1; background: $boost; text-style: bold; }
    #alerts { height: 3fr; }
    #detail { height: auto; max-height: 6; border-top: solid $primary; }
    #lower { height: 2fr; border-top: solid $primary; }
    #message { height: auto; max-height: 2; color: $warning; }
    """

    def __init__(
        self,
        registry: Any,
        *,
        operator: str,
        attend: Callable[[int], Any] | None = None,
        closer: Closer | None = None,
        limit: int = view.queries.DEFAULT_LIMIT,
        refresh_s: float = REFRESH_S,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.operator = operator
        self.attend = attend
        self.closer = closer
        self.limit = limit
        self.refresh_s = refresh_s
        self.snap: dict[str, Any] | None = None
        self.selected: int | None = None  # the alert id under the cursor
        self.show_devices = False
        self._seen_pending: set[int] | None = None
        self._width_class: bool | None = None

    # Actions that act on the main screen: not while the close dialog is open
    # (an `a` or `q` typed there must not attend another alert or quit).
    _MAIN_ACTIONS = frozenset({"attend", "close_alert", "toggle_lower", "quit", "move"})

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self._MAIN_ACTIONS and isinstance(self.screen, ModalScreen):
            return False
        return True

    # ---------------------------------------------------------- layout ---

    def compose(self) -> ComposeResult:
        # Held by reference: while the close dialog is the active screen, a query
        # from the app would search the dialog, not the main screen.
        self.summary_line = Static("", id="summary")
        self.alerts = DataTable(id="alerts", cursor_type="row", zebra_stripes=False)
        self.detail = Static("", id="detail")
        self.lower = DataTable(id="lower", cursor_type="row", show_cursor=False)
        self.message_line = Static("", id="message")
        yield self.summary_line
        yield self.alerts
        yield self.detail
        yield self.lower
        yield self.message_line
        yield Footer()

    def on_mount(self) -> None:
        self.alerts.focus()
        self.action_refresh()
        self.set_interval(self.refresh_s, self.action_refresh)

    def on_resize(self) -> None:
        if self.snap is not None:
            self._show(self.snap)

    # ------------------------------------------------------------ data ---

    def action_refresh(self) -> None:
        self.run_worker(self._load, thread=True, exclusive=True, group="refresh")

    def _load(self) -> None:
        try:
            snap = view.snapshot(self.registry, self.limit, with_devices=self.show_devices)
        except Exception as exc:  # noqa: BLE001 - a registry hiccup must not end the console
            log.warning("console: registry read failed: %s", exc)
            self.call_from_thread(self.message, f"registry: {exc}")
            return
        self.call_from_thread(self._show, snap)

    def _show(self, snap: dict[str, Any]) -> None:
        if not self.is_running:
            return  # a refresh that finished after the console quit
        self.snap = snap
        width = self.size.width
        self.summary_line.update(view.summary(snap))
        pending = {a["id"] for a in snap["alerts"] if a["state"] == "pending"}
        if self._seen_pending is not None and pending - self._seen_pending:
            self.bell()  # a new alert waiting: the operator may be looking elsewhere
        self._seen_pending = pending
        table = self.alerts
        self._fill(
            table,
            view.columns(view.ALERT_COLUMNS, width),
            snap["alerts"],
            view.alert_style,
            lambda a: f"a{a['id']}",
            width,
        )
        if self.selected is not None and f"a{self.selected}" in table.rows:
            table.move_cursor(row=table.get_row_index(f"a{self.selected}"), scroll=False)
        elif table.row_count:
            table.move_cursor(row=0)
        self._selection_changed()
        if self.show_devices:
            rows, cols, style = snap["devices"], view.DEVICE_COLUMNS, view.device_style
        else:
            rows, cols, style = snap["events"], view.EVENT_COLUMNS, view.event_style
        self._fill(
            self.lower,
            view.columns(cols, width),
            rows,
            style,
            None,
            width,
        )

    def _fill(
        self,
        table: DataTable,
        cols: list[view.Col],
        rows: list[dict[str, Any]],
        style: Callable[[dict[str, Any]], str],
        key: Callable[[dict[str, Any]], str] | None,
        width: int,
    ) -> None:
        """Rows into a table; the last column takes what the screen has left."""
        table.clear(columns=True)
        used = sum(c.width + _CELL_PAD for c in cols[:-1]) + _CELL_PAD + _SCROLLBAR
        for i, c in enumerate(cols):
            w = c.width if i < len(cols) - 1 else max(c.width, width - used)
            table.add_column(_(c.header), width=w)
        for r in rows:
            st = style(r)
            table.add_row(
                *(Text(c.cell(r), style=st, no_wrap=True, overflow="ellipsis") for c in cols),
                key=key(r) if key else None,
            )

    # ------------------------------------------------------- selection ---

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "alerts" or event.row_key is None or event.row_key.value is None:
            return
        self.selected = int(str(event.row_key.value)[1:])
        self._selection_changed()

    def selected_alert(self) -> dict[str, Any] | None:
        if self.snap is None or self.selected is None:
            return None
        return next((a for a in self.snap["alerts"] if a["id"] == self.selected), None)

    def _selection_changed(self) -> None:
        lines = view.detail_lines(self.selected_alert(), self.size.width)
        self.detail.update(Text("\n").join(lines))

    def action_move(self, step: int) -> None:
        self.alerts.move_cursor(row=max(0, self.alerts.cursor_row + step))

    def action_toggle_lower(self) -> None:
        self.show_devices = not self.show_devices
        self.action_refresh()

    # --------------------------------------------------------- actions ---

    def message(self, text: str) -> None:
        if self.is_running:
            self.message_line.update(text)

    def action_attend(self) -> None:
        a = self.selected_alert()
        if a is None:
            self.message(_("no hay alerta seleccionada"))
            return
        self.message(_("Alerta {id}: solicitando atención…").format(id=a["id"]))
        self.run_worker(lambda: self._attend(a["id"]), thread=True, group="attend")

    def _attend(self, alert_id: int) -> None:
        try:
            if self.attend is None:
                raise AuxilioError("no broker configured for attend")
            res = self.attend(alert_id)
            text = view.attend_message(alert_id, res.state, res.reason, self.operator)
        except Exception as exc:  # noqa: BLE001 - one line for the operator, the console stays up
            text = view.attend_message(alert_id, "failed", str(exc), self.operator)
        self.call_from_thread(self.message, text)
        self.call_from_thread(self.action_refresh)

    def action_close_alert(self) -> None:
        a = self.selected_alert()
        if a is None:
            self.message(_("no hay alerta seleccionada"))
            return
        if self.closer is None:
            self.message(_("esta consola no puede cerrar alertas (sin registro de escritura)"))
            return

        def done(result: tuple[str, str] | None) -> None:
            if result is None:
                return
            self.message(_("Alerta {id}: cerrando…").format(id=a["id"]))
            self.run_worker(
                lambda: self._close(a["id"], result[0], result[1], a["outcome"] is not None),
                thread=True,
                group="close",
            )

        self.push_screen(CloseScreen(a), done)

    def _close(self, alert_id: int, outcome: str, note: str, amend: bool) -> None:
        assert self.closer is not None
        try:
            text = self.closer.close_alert(
                alert_id, outcome, self.operator, note, amend=amend
            ).message()
        except AuxilioError as exc:
            text = f"error: {exc}"
        except Exception as exc:  # noqa: BLE001 - one line for the operator, the console stays up
            log.exception("console: closing alert %d failed", alert_id)
            text = f"error: {type(exc).__name__}: {exc}"
        self.call_from_thread(self.message, text)
        self.call_from_thread(self.action_refresh)


def run_live(
    registry: Any,
    broker_url: str | None,
    operator: str,
    prefix: str = "auxilio",
    limit: int = view.queries.DEFAULT_LIMIT,
    closer: Closer | None = None,
) -> None:
    """The interactive console until 'q' or Ctrl-C."""
    from auxilio.gateway.control import request_attend

    def attend(alert_id: int) -> Any:
        return request_attend(broker_url or "", alert_id, operator, prefix)

    MonitorApp(
        registry,
        operator=operator,
        attend=attend if broker_url else None,
        closer=closer,
        limit=limit,
    ).run()
