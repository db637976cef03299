"""The C4 operator console: the dispatch queue, events, alert context, outcomes and the programme report.

- ``queries``: the bounded, read-only queries a console refresh makes;
- ``view``: rows -> what the operator reads (words, context, map links,
  elapsed time), the JSON snapshot and the ``--once`` tables;
- ``app``: the live console (Textual), ``a`` attends through the gateway,
  ``c`` closes with an outcome;
- ``outcomes``: the console's one write, an operator outcome (audited);
- ``report``: ``auxilio report`` for the programme office.

Consoles never write what the gateway owns (DESIGN §1): alerts, dispositions
and attend state are read here and changed only by the gateway.
"""
