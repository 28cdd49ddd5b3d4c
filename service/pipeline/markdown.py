"""Markdown: the words without the markup, read from markdown-it-py's token stream."""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.token import Token

from service.pipeline.html import read_html
from service.pipeline.models import RawDocument

_PARSER = MarkdownIt("commonmark").enable(["table", "strikethrough"])

_ENDS_PARAGRAPH = frozenset(
    {
        "paragraph_close",
        "heading_close",
        "blockquote_close",
        "bullet_list_close",
        "ordered_list_close",
        "table_close",
        "hr",
    }
)
_ENDS_LINE = frozenset({"list_item_close", "tr_close"})


def read_markdown(source: str) -> RawDocument:
    """The text of a Markdown document, and its first level-one heading as the title."""
    tokens = _PARSER.parse(source)
    parts: list[str] = []
    title: str | None = None
    first_cell = False
    for index, token in enumerate(tokens):
        kind = token.type
        if kind == "inline":
            parts.append(_inline_text(token))
        elif kind in {"fence", "code_block"}:
            parts.append(token.content + "\n\n")
        elif kind == "html_block":
            parts.append(read_html(token.content).text + "\n\n")
        elif kind == "heading_open" and token.tag == "h1" and title is None:
            title = _inline_text(tokens[index + 1])
        elif kind == "tr_open":
            first_cell = True
        elif kind in {"th_open", "td_open"}:
            if not first_cell:
                parts.append(" | ")
            first_cell = False
        elif kind in _ENDS_PARAGRAPH and not token.hidden:
            parts.append("\n\n")
        elif kind in _ENDS_LINE:
            parts.append("\n")
    return RawDocument(text="".join(parts), title=title)


def _inline_text(token: Token) -> str:
    """The words of an inline token: text, code and image descriptions; line breaks kept."""
    parts: list[str] = []
    for child in token.children or ():
        if child.type in {"text", "code_inline", "image"}:
            parts.append(child.content)
        elif child.type in {"softbreak", "hardbreak"}:
            parts.append("\n")
    return "".join(parts)
