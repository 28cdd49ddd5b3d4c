"""HTML: the visible text of the body, and the page's <title>.

One parse with selectolax's lexbor backend and one text walk in C. Line breaks for block elements
are put into the markup before parsing, by one regular-expression pass: lexbor's text walk knows
nothing of block and inline elements, and marking blocks in the parsed tree from Python would
cost a call per element.
"""

from __future__ import annotations

import re

from selectolax.lexbor import LexborHTMLParser

from service.pipeline.models import RawDocument

_BLOCK_TAGS = (
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "dialog",
    "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hr", "legend", "li", "main", "nav", "ol", "p", "pre", "section",
    "summary", "table", "tbody", "tfoot", "thead", "tr", "ul",
)  # fmt: skip
_CELL_TAGS = ("td", "th")
# No <template>: its content lives in a document fragment outside the tree, unseen by text().
_HIDDEN_TAGS = ["script", "style", "noscript", "title"]


def _before_tags(names: tuple[str, ...], flags: re.RegexFlag) -> re.Pattern[str]:
    """The position just before each opening or closing tag of one of `names`."""
    alternatives = "|".join(sorted(names, key=len, reverse=True))
    return re.compile(rf"<(?=/?(?:{alternatives})[\s/>])", flags)


# IGNORECASE makes these passes about three times slower, so it is kept for pages whose first
# 4 KB show tags written in capitals.
_BLOCK = _before_tags(_BLOCK_TAGS, re.NOFLAG)
_BLOCK_ANY_CASE = _before_tags(_BLOCK_TAGS, re.IGNORECASE)
_CELL = _before_tags(_CELL_TAGS, re.NOFLAG)
_CELL_ANY_CASE = _before_tags(_CELL_TAGS, re.IGNORECASE)
_CAPITAL_TAG = re.compile(r"</?[A-Z]")


def read_html(markup: str) -> RawDocument:
    """The body's text, block elements on lines of their own, and the <title>."""
    any_case = _CAPITAL_TAG.search(markup, 0, 4096) is not None
    markup = (_BLOCK_ANY_CASE if any_case else _BLOCK).sub("\n<", markup)
    if "<td" in markup or "<th" in markup or any_case:
        markup = (_CELL_ANY_CASE if any_case else _CELL).sub("\t<", markup)
    # With scripting on, <noscript> holds one text node instead of markup that can spill its
    # content out of an enclosing element, where stripping the tag would leave it behind.
    page = LexborHTMLParser(markup, scripting=True)
    title_node = page.css_first("head > title")  # not an <svg>'s <title>
    title = title_node.text() if title_node is not None else None
    page.strip_tags(_HIDDEN_TAGS)
    body = page.body
    return RawDocument(text=body.text() if body is not None else "", title=title)
