"""A document's text gathered block by block, its characters counted as it grows."""

from __future__ import annotations

from service.pipeline.limits import CpuBudget


class Blocks:
    """Blocks of text (paragraphs, rows, slides) split by blank lines or line breaks; TooLarge
    as soon as they hold more than `max_chars`, the CPU budget checked before each is added.

    `what` names the document in the failure: "the workbook holds more than N characters".
    """

    def __init__(self, budget: CpuBudget, what: str) -> None:
        self.budget = budget
        self.what = what
        self.items: list[str] = []
        self.chars = 0

    def add(self, block: str, where: str = "", *, line: bool = False) -> None:
        """Add a block after a blank line, or on the next `line` (a table's next row)."""
        self.budget.check(where or f"in {self.what}")
        self.chars += len(block) + 2
        self.check(0)
        if self.items:
            self.items.append("\n" if line else "\n\n")
        self.items.append(block)

    def check(self, pending: int) -> None:
        """TooLarge if `pending` more characters (a row being built) would pass the limit."""
        self.budget.limits.check(
            "max_chars", self.chars + pending, f"{self.what} holds more than {{count:,}} characters"
        )

    def text(self) -> str:
        return "".join(self.items)
