"""The state store (`.nero/state.db`): runs, attempts, metric points, events, overrides
and the e-mail outbox, in SQLite (the home of sqlite3).

    store.py      Store: the schema, reading runs and histories, one transaction per write
    histories.py  the metric histories a Store keeps, and how metric rows merge into them
    outbox.py     Mail and the outbox methods of Store
    tally.py      questions about all runs answered in SQL (counts, live clusters, the few runs a summary shows)
    cache.py      what a command may reuse: values kept under a stamp of their inputs and the data version
"""

from __future__ import annotations

from .outbox import Mail
from .store import SCHEMA_VERSION, Store

__all__ = ["SCHEMA_VERSION", "Store", "Mail"]
