"""The People sheet: the people a row's `notify` may name (name, email) and the digest each
gets (`mine`: the rows that name them; `all`; `off`). The user file's `[people]` is read
by the same code (userconfig.py); a People row replaces a user-file person of its name."""

from __future__ import annotations

from ..model import Person
from .cells import choice, identifier, text
from .table import Problems, Sheet, read_table, report_unknown_columns, table_rows

__all__ = ["DIGEST_PREFERENCES", "PEOPLE_COLUMNS", "email_address", "read_people"]

PEOPLE_COLUMNS = ("name", "email", "digest", "notes")
DIGEST_PREFERENCES = ("mine", "all", "off")


def email_address(value: object, column: str) -> str:
    """One e-mail address (a name with an @ and a dot after it)."""
    address = text(value)
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or " " in address:
        raise ValueError(f"{address!r} is not an e-mail address for {column}; write e.g. ada@example.org")
    return address


def read_people(sheet: Sheet | None, problems: Problems) -> tuple[tuple[Person, str], ...]:
    """The people, each with the cell of its name; none without the sheet."""
    table = read_table(sheet, PEOPLE_COLUMNS, problems) if sheet else None
    if table is None:
        return ()
    report_unknown_columns(table, PEOPLE_COLUMNS, problems)
    missing = [c for c in ("name", "email") if c not in table.columns]
    if missing:
        problems.add(f"{table.sheet.title}!{table.header}", f"the People header row has no {' and no '.join(missing)} "
                     f"column (headers found: {', '.join(table.headers)}); add columns name, email, digest")
        return ()
    people: list[tuple[Person, str]] = []
    seen: dict[str, str] = {}
    for row in table_rows(table, problems):
        name = row.require("name", identifier, "", "missing name; write the name rows use in notify, e.g. ada")
        email = row.require("email", email_address, "", "missing email; write the person's address, e.g. ada@example.org")
        digest = row.get("digest", choice(DIGEST_PREFERENCES), "mine")
        if not name or not email:
            continue
        if name.lower() in seen:
            problems.add(row.ref("name"), f"person {name!r} appears twice (also {seen[name.lower()]}); keep one row")
            continue
        seen[name.lower()] = row.ref("name")
        people.append((Person(name, email, digest), row.ref("name")))
    return tuple(people)
