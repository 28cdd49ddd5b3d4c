"""A document read page by page: before each page the CPU budget is checked and the page told to
whoever watches (service.pipeline.steps); after it, the characters so far against the limit."""

from __future__ import annotations

from service.pipeline import steps
from service.pipeline.limits import CpuBudget


class Pages:
    """The text of the pages read so far, of `total` in all; `what` names the document in
    failures ("the PDF", "the image")."""

    def __init__(self, budget: CpuBudget, what: str, total: int) -> None:
        self.budget = budget
        self.what = what
        self.total = total
        self.texts: list[str] = []
        self.chars = 0

    def begin(self, number: int) -> None:
        """Page `number` (from 1) is about to be read: TooLarge once the CPU budget is spent."""
        self.budget.check(f"at page {number} of {self.total}")
        steps.page(number, self.total)

    def add(self, text: str) -> None:
        """The next page's text: TooLarge once the pages so far hold too many characters."""
        self.texts.append(text)
        self.chars += len(text)
        found = f"{self.what}'s first {len(self.texts)} pages hold {{count:,}} characters"
        self.budget.limits.check("max_chars", self.chars, found)

    @property
    def text(self) -> str:
        """The pages' text, split by a blank line; empty when no page has any."""
        text = "\n\n".join(self.texts)
        return "" if text.isspace() else text
