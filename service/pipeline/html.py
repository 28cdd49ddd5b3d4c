"""HTML: the visible text of the body, the page's <title>, and its author and dates from <meta>.

One parse with selectolax's lexbor backend and one text walk in C. Line breaks for block elements,
and tabs between table cells, are put into the markup before parsing, by one regular-expression
pass: lexbor's text walk knows nothing of block and inline elements, and marking blocks in the
parsed tree from Python would cost a call per element.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from selectolax.lexbor import LexborHTMLParser, LexborNode

from service.errors import TooLarge
from service.pipeline.models import RawDocument

_BLOCK_TAGS = (
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "dialog",
    "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hr", "legend", "li", "main", "nav", "ol", "p", "pre", "section",
    "summary", "table", "tbody", "tfoot", "thead", "tr", "ul",
)  # fmt: skip
# No <template>: its content lives in a document fragment outside the tree, unseen by text().
_HIDDEN_TAGS = ["script", "style", "noscript", "title"]


def _before_tags(flags: re.RegexFlag) -> re.Pattern[str]:
    """The position just before each opening or closing tag of a block or a table cell. Its one
    group holds the "t" of a cell's name, and nothing for a block: one pass of `split` finds
    both. A pass for each cost about as much on pages of tables, and on pages without any, the
    search for "<td" and "<th" that skipped the second pass cost a quarter of the first."""
    return re.compile(rf"<(?=/?(?:(t)[dh]|{_prefix_tree(_BLOCK_TAGS)})[\s/>])", flags)


def _prefix_tree(names: Iterable[str]) -> str:
    """An alternation of `names` with common prefixes shared ("d(?:d|i(?:alog|v)|l|t)"): the
    regex engine then tries a few letters at each "<" instead of every name, which halves the
    cost of the pass over a page."""
    tails: dict[str, list[str]] = {}
    complete = False
    for name in names:
        if name:
            tails.setdefault(name[0], []).append(name[1:])
        else:
            complete = True
    if not tails:
        return ""
    branches = [re.escape(first) + _prefix_tree(rest) for first, rest in sorted(tails.items())]
    tree = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
    return f"(?:{tree})?" if complete else tree


# IGNORECASE makes this pass about three times slower, so it is kept for pages whose first 4 KB
# show tags written in capitals.
_BEFORE_TAGS = _before_tags(re.NOFLAG)
_BEFORE_TAGS_ANY_CASE = _before_tags(re.IGNORECASE)
_CAPITAL_TAG = re.compile(r"</?[A-Z]")
# What goes before each tag found, by the pattern's group: a tab before a cell, which
# normalisation makes a space, a line break before a block.
_BREAKS = {None: "\n<", "t": "\t<", "T": "\t<"}

# lexbor's tree builder walks the stack of open elements for each block start tag and each end
# tag that closes nothing (the HTML standard's "has an element in scope"), and the list of
# options of a <select> for each new option, so those cost time quadratic in the depth, or in
# the options of one select: 80,000 nested <div> take 27 s, 16,000 options 1.2 s, and native
# code cannot be interrupted. Measured on 256,000 block tags (3 MB), nesting them 256 deep costs
# 3.5 times what a flat page does, 512 deep 5 times, 1,024 deep 9 times, 4,096 deep 35 times:
# superlinear from about 256, so the bound is 512 — which is also where Blink stops nesting.
# The scan costs about 0.7 µs a tag, a third of what parsing costs; below 32,768 tags (a page
# of a megabyte or so) even the worst shapes parse within about a second, so it is skipped there.
MAX_NESTING = 512
_NESTING_SCAN_FROM = 32_768
_TAG_OR_SELF_CLOSING = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)|/>")
# Void elements, and elements whose end tag may be left out (the next one closes them).
_NEVER_NESTED = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr", "keygen", "frame", "p", "li", "dt", "dd", "tr", "td", "th",
    "option", "optgroup", "rb", "rt", "rp", "rtc", "tbody", "thead", "tfoot", "colgroup",
    "caption", "html", "head", "body",
})  # fmt: skip
_RAW_TEXT = frozenset({"script", "style", "textarea", "title", "xmp", "noembed", "noframes"})
_FOREIGN = frozenset({"svg", "math"})
_SELECT = re.compile(r"<(/?)select(?=[\s/>])", re.IGNORECASE)

# The <meta> names (or Open Graph properties) that common writers use, earlier ones preferred.
_AUTHOR = ("author", "dcterms.creator", "dc.creator")
_CREATED = ("dcterms.created", "dc.date.created", "article:published_time", "dcterms.date", "date")
_MODIFIED = ("dcterms.modified", "dc.date.modified", "article:modified_time", "og:updated_time")


def read_html(markup: str) -> RawDocument:
    """The body's text, block elements on lines of their own, and the <title>."""
    if markup.count("<") > _NESTING_SCAN_FROM:
        depth = nesting_depth(markup)
        if depth > MAX_NESTING:
            raise TooLarge(
                f"the HTML nests elements {depth:,} deep; docproc reads at most {MAX_NESTING}"
            )
        # Outside a <select> an <option> is an element like another: same text, linear time.
        markup = _SELECT.sub(r"<\1div", markup)
    markup = break_lines(markup)
    # With scripting on, <noscript> holds one text node instead of markup that can spill its
    # content out of an enclosing element, where stripping the tag would leave it behind.
    page = LexborHTMLParser(markup, scripting=True)
    title, meta = _head(page.head)
    page.strip_tags(_HIDDEN_TAGS)
    body = page.body
    return RawDocument(
        # lexbor's own textContent: the same text as text(), which calls back into selectolax
        # for each text node and grows its buffer as it goes, in half the time (0.5 ms/MB).
        text=body.text_lexbor() if body is not None else "",
        title=title,
        author=_first(meta, _AUTHOR),
        created=_moment(_first(meta, _CREATED)),
        modified=_moment(_first(meta, _MODIFIED)),
    )


def break_lines(markup: str) -> str:
    """`markup` with a line break before each tag of a block element and a tab before each of a
    table cell, which lexbor's text then keeps."""
    any_case = _CAPITAL_TAG.search(markup, 0, 4096) is not None
    # `split` puts each match's group between the pieces around it.
    parts = (_BEFORE_TAGS_ANY_CASE if any_case else _BEFORE_TAGS).split(markup)
    parts[1::2] = map(_BREAKS.__getitem__, parts[1::2])
    return "".join(parts)


def _head(head: LexborNode | None) -> tuple[str | None, dict[str, str]]:
    """The head's <title> (not an <svg>'s, which the parser puts in the body), and its
    <meta name|property=… content=…> by lower-cased name, the first of each.

    One walk over the head's children: the parser lets nothing else nest there (a <template>'s
    content is no child), and two CSS queries, each compiling its selector for every page, took
    10 µs of the 25 a small page costs.
    """
    title: str | None = None
    found: dict[str, str] = {}
    for node in head.iter() if head is not None else ():
        if node.tag == "title":
            if title is None:
                title = node.text()
        elif node.tag == "meta":
            attributes = node.attributes
            name = attributes.get("name") or attributes.get("property")
            content = attributes.get("content")
            if name and content:
                found.setdefault(name.strip().lower(), content)
    return title, found


def _first(meta: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((meta[name] for name in names if name in meta), None)


def _moment(value: str | None) -> datetime | None:
    """An ISO 8601 date or date and time (UTC when it names no zone); None when it is not one."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # not ISO 8601, or out of range once in UTC
        return None


def nesting_depth(markup: str) -> int:
    """How deep the page nests elements, as its tags say, in one pass over them.

    An estimate, never a parse: end tags that close something open (by name) count, void
    elements and those with optional end tags do not, nor what raw-text elements hold; `/>`
    closes an element only inside <svg> or <math>, as in HTML. Markup that leaves many inline
    elements open inside paragraphs is over-counted, which a page would need hundreds of.
    """
    depth = deepest = foreign = 0
    open_by_name: dict[str, int] = {}
    raw_text = ""
    last_opened = ""
    for slash, tag in _TAG_OR_SELF_CLOSING.findall(markup):
        if not tag:  # "/>"
            if foreign and last_opened:
                open_by_name[last_opened] -= 1
                depth -= 1
                foreign -= last_opened in _FOREIGN
            last_opened = ""
            continue
        name = tag.lower()
        last_opened = ""
        if raw_text:
            if slash and name == raw_text:
                raw_text = ""
        elif name in _NEVER_NESTED:
            pass
        elif slash:
            if open_by_name.get(name):
                open_by_name[name] -= 1
                depth -= 1
                foreign -= name in _FOREIGN
        elif name in _RAW_TEXT:
            raw_text = name
        else:
            open_by_name[name] = open_by_name.get(name, 0) + 1
            depth += 1
            foreign += name in _FOREIGN
            last_opened = name
            deepest = max(deepest, depth)
    return deepest
