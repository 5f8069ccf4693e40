from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """One row of the example pipeline."""

    name: str
    amount: float


def summarize(records: list[Record]) -> dict[str, float]:
    """Totals per name, rounded to cents."""
    totals: dict[str, float] = {}
    for r in records:
        totals[r.name] = round(totals.get(r.name, 0.0) + r.amount, 2)
    return totals
