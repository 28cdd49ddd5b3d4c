"""Office and mail documents built in memory with their own writers (openpyxl, python-pptx,
python-docx, zipfile for OpenDocument, email.message for mail, RTF written out), each holding
words the tests look for; and their hostile shapes. Unit and end-to-end tests share them."""

from __future__ import annotations

import io
import zipfile
import zlib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

import docx
import openpyxl
import pptx
from docx.oxml import parse_xml
from pptx.util import Inches

from tests.hostile_files import deflated_spaces, zip_of

WHEN = datetime(2024, 3, 5, 9, 30, tzinfo=UTC)
ODF_NAMESPACES = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
    'xmlns:presentation="urn:oasis:names:tc:opendocument:xmlns:presentation:1.0" '
    'xmlns:meta="urn:oasis:names:tc:opendocument:xmlns:meta:1.0" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/" office:version="1.3"'
)
ODF_MIMETYPES = {
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "odp": "application/vnd.oasis.opendocument.presentation",
}
_ODF_BODIES = {"odt": "office:text", "ods": "office:spreadsheet", "odp": "office:presentation"}


def xlsx(words: str = "marmalade") -> bytes:
    """Two sheets, "Stock" (a header row, a data row, a cell far from the others) and "Notes"."""
    book = openpyxl.Workbook()
    stock = book.active
    assert stock is not None
    stock.title = "Stock"
    stock.append(["Item", "Count", "Fresh"])
    stock.append([f"{words} jars", 12, True])
    stock["H40"] = "far corner"
    book.create_sheet("Notes")["B2"] = "order more in spring"
    book.properties.title = "Pantry"
    book.properties.creator = "Ada Lovelace"
    book.properties.created = WHEN.replace(tzinfo=None)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def pptx_file(words: str = "lighthouse") -> bytes:
    """Two slides: a title and a bullet with speaker notes; a title and a table."""
    deck = pptx.Presentation()
    first = deck.slides.add_slide(deck.slide_layouts[1])
    first.shapes.title.text = f"The {words} keeper"  # type: ignore[union-attr]
    first.placeholders[1].text = "lamps are trimmed nightly"  # type: ignore[attr-defined]
    first.notes_slide.notes_text_frame.text = "mention the storm of 1910"  # type: ignore[union-attr]
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "Rota"  # type: ignore[union-attr]
    table = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    table.cell(0, 0).text = "Monday"
    table.cell(0, 1).text = "Ewan"
    deck.core_properties.title = "Keeping the light"
    deck.core_properties.author = "Grace Hopper"
    deck.core_properties.created = WHEN.replace(tzinfo=None)
    buffer = io.BytesIO()
    deck.save(buffer)
    return buffer.getvalue()


def docx_with_everything() -> bytes:
    """A paragraph with a footnote and a text box, a header, a footer; an author and times."""
    document = docx.Document()
    paragraph = document.add_paragraph("The body speaks of tides.")
    document.sections[0].header.paragraphs[0].text = "Harbour Board minutes"
    document.sections[0].footer.paragraphs[0].text = "Confidential draft"
    box = (
        '<w:r xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
        'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
        'xmlns:v="urn:schemas-microsoft-com:vml"><mc:AlternateContent><mc:Choice Requires="wps">'
        "<w:drawing><w:txbxContent><w:p><w:r><w:t>Boxed aside about gulls</w:t></w:r></w:p>"
        "</w:txbxContent></w:drawing></mc:Choice><mc:Fallback><w:pict><v:textbox>"
        "<w:txbxContent><w:p><w:r><w:t>Boxed aside about gulls</w:t></w:r></w:p>"
        "</w:txbxContent></v:textbox></w:pict></mc:Fallback></mc:AlternateContent></w:r>"
    )
    paragraph._p.append(parse_xml(box))
    document.core_properties.author = "Mary Shelley"
    document.core_properties.created = WHEN.replace(tzinfo=None)
    document.core_properties.modified = WHEN.replace(tzinfo=None)
    buffer = io.BytesIO()
    document.save(buffer)
    return _with_footnotes(buffer.getvalue(), "A footnote on barnacles.")


def _with_footnotes(package: bytes, note: str) -> bytes:
    """The package with a footnotes part (python-docx writes none): two separators and `note`."""
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    footnotes = (
        f'<w:footnotes {w}><w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:separator/>'
        '</w:r></w:p></w:footnote><w:footnote w:type="continuationSeparator" w:id="0"><w:p>'
        '<w:r><w:continuationSeparator/></w:r></w:p></w:footnote><w:footnote w:id="1"><w:p>'
        f"<w:r><w:t>{note}</w:t></w:r></w:p></w:footnote></w:footnotes>"
    ).encode()
    relationship = (
        b'<Relationship Id="rIdNotes" Type="http://schemas.openxmlformats.org/officeDocument/'
        b'2006/relationships/footnotes" Target="footnotes.xml"/></Relationships>'
    )
    override = (
        b'<Override PartName="/word/footnotes.xml" ContentType="application/vnd.openxmlformats-'
        b'officedocument.wordprocessingml.footnotes+xml"/></Types>'
    )
    source = zipfile.ZipFile(io.BytesIO(package))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "word/_rels/document.xml.rels":
                data = data.replace(b"</Relationships>", relationship)
            elif member.filename == "[Content_Types].xml":
                data = data.replace(b"</Types>", override)
            archive.writestr(member.filename, data)
        archive.writestr("word/footnotes.xml", footnotes)
    return out.getvalue()


def odf(kind: str, body: str, meta: str = "", manifest: str = "", mimetype: str = "") -> bytes:
    """An OpenDocument package of `kind` (odt, ods, odp) whose body holds `body` (raw XML), its
    meta.xml `meta` and its manifest `manifest` besides its one entry; `mimetype` says another."""
    element = _ODF_BODIES[kind]
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {ODF_NAMESPACES}>'
        f"<office:automatic-styles/><office:body><{element}>{body}</{element}></office:body>"
        "</office:document-content>"
    )
    meta_xml = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-meta {ODF_NAMESPACES}>'
        f"<office:meta>{meta}</office:meta></office:document-meta>"
    )
    manifest_xml = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest="urn:oasis:'
        'names:tc:opendocument:xmlns:manifest:1.0"><manifest:file-entry manifest:full-path="/" '
        f'manifest:media-type="{ODF_MIMETYPES[kind]}"/>{manifest}</manifest:manifest>'
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("mimetype", mimetype or ODF_MIMETYPES[kind], zipfile.ZIP_STORED)
        archive.writestr("content.xml", content, zipfile.ZIP_DEFLATED)
        archive.writestr("meta.xml", meta_xml, zipfile.ZIP_DEFLATED)
        archive.writestr("META-INF/manifest.xml", manifest_xml, zipfile.ZIP_DEFLATED)
    return out.getvalue()


ODF_META = (
    "<dc:title>Tide tables</dc:title><meta:initial-creator>Rachel Carson</meta:initial-creator>"
    "<dc:creator>Someone Else</dc:creator>"
    "<meta:creation-date>2024-03-05T09:30:00.123456789</meta:creation-date>"
    "<dc:date>2024-04-01T12:00:00Z</dc:date>"
    '<meta:document-statistic meta:page-count="2"/>'
)


def odt(words: str = "periwinkle") -> bytes:
    """A heading, a paragraph with spaces, a tab and a footnote, a table."""
    return odf(
        "odt",
        f'<text:h text:outline-level="1">The {words} shore</text:h>'
        "<text:p>Low<text:s text:c='3'/>tide<text:tab/>at dawn"
        "<text:note text:note-class='footnote'><text:note-citation>1</text:note-citation>"
        "<text:note-body><text:p>A note on kelp.</text:p></text:note-body></text:note>.</text:p>"
        "<table:table table:name='T'><table:table-row><table:table-cell><text:p>crab</text:p>"
        "</table:table-cell><table:table-cell><text:p>3</text:p></table:table-cell>"
        "</table:table-row></table:table>",
        ODF_META,
    )


def ods(words: str = "quince") -> bytes:
    """Two sheets; repeated cells and rows, empty ones repeated as LibreOffice writes them."""
    empty_rest = (
        '<table:table-row table:number-rows-repeated="1048570"><table:table-cell '
        'table:number-columns-repeated="16384"/></table:table-row>'
    )
    return odf(
        "ods",
        '<table:table table:name="Orchard"><table:table-row><table:table-cell><text:p>Fruit'
        "</text:p></table:table-cell><table:table-cell table:number-columns-repeated='2'>"
        f"<text:p>{words}</text:p></table:table-cell><table:table-cell "
        'table:number-columns-repeated="16000"/></table:table-row>'
        f"{empty_rest}</table:table>"
        '<table:table table:name="Shed"><table:table-row table:number-rows-repeated="2">'
        "<table:table-cell><text:p>rake</text:p></table:table-cell></table:table-row>"
        f"{empty_rest}</table:table>",
        ODF_META,
    )


def odp(words: str = "albatross") -> bytes:
    """Two slides, the first with notes."""
    return odf(
        "odp",
        '<draw:page draw:name="One"><draw:frame><draw:text-box><text:p>Flight of the '
        f"{words}</text:p></draw:text-box></draw:frame><presentation:notes><draw:frame>"
        "<draw:text-box><text:p>say it slowly</text:p></draw:text-box></draw:frame>"
        '</presentation:notes></draw:page><draw:page draw:name="Two"><draw:frame>'
        "<draw:text-box><text:p>Nesting grounds</text:p></draw:text-box></draw:frame>"
        "</draw:page>",
        ODF_META,
    )


def rtf(words: str = "sextant") -> bytes:
    """A title and author in the info group, accented text, a hidden binary picture."""
    return (
        r"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0 Times;}}"
        r"{\info{\title Navigation notes}{\author Matthew Flinders}"
        r"{\creatim\yr2024\mo3\dy5\hr9\min30}{\revtim\yr2024\mo4\dy1\hr12\min0}}"
        rf"\pard The {words} and the caf\'e9 chart.\par "
        r"{\*\shppict{\pict\pngblip\bin6 ABCDEF}}"
        r"Second line\u8217?s end.\par}"
    ).encode("latin-1")


def eml(words: str = "cormorant", html_only: bool = False) -> bytes:
    """A message with a plain and an HTML body (or only HTML) and an attachment."""
    message = EmailMessage()
    message["From"] = "Ann Bonny <ann@example.org>"
    message["To"] = "Mary Read <mary@example.org>"
    message["Subject"] = "Sighting report"
    message["Date"] = format_datetime(WHEN)
    html = f"<html><body><p>A <b>{words}</b> on the rocks.</p></body></html>"
    if html_only:
        message.set_content(html, subtype="html")
    else:
        message.set_content(f"A {words} on the rocks.\nMore tomorrow.")
        message.add_alternative(html, subtype="html")
    message.add_attachment(b"\x00" * 1000, maintype="application", subtype="octet-stream",
                           filename="logbook.bin")  # fmt: skip
    return message.as_bytes()


# --- hostile shapes -----------------------------------------------------------------------------


def _package_bomb(members: list[tuple[str, bytes]], bomb: str, inflated: int) -> bytes:
    """A package of true `members` and a part `bomb` that declares and inflates to `inflated`."""
    entries = [_true_member(name, data) for name, data in members]
    entries.append((bomb, deflated_spaces(inflated), inflated, 0))
    return zip_of(entries)


def _true_member(name: str, data: bytes) -> tuple[str, bytes, int, int]:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (name, compressor.compress(data) + compressor.flush(), len(data), zlib.crc32(data))


def xlsx_bomb(inflated: int = 1 << 30) -> bytes:
    """An XLSX whose first sheet declares and inflates to `inflated` bytes."""
    return _ooxml_bomb(xlsx(), "xl/worksheets/sheet1.xml", inflated)


def pptx_bomb(inflated: int = 1 << 30) -> bytes:
    """A PPTX whose first slide declares and inflates to `inflated` bytes."""
    return _ooxml_bomb(pptx_file(), "ppt/slides/slide1.xml", inflated)


def _ooxml_bomb(package: bytes, bomb: str, inflated: int) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(package))
    members = [(m.filename, source.read(m)) for m in source.infolist() if m.filename != bomb]
    return _package_bomb(members, bomb, inflated)


def odf_bomb(kind: str = "ods", inflated: int = 1 << 30) -> bytes:
    """An OpenDocument package whose content.xml declares and inflates to `inflated` bytes."""
    return _package_bomb([("mimetype", ODF_MIMETYPES[kind].encode())], "content.xml", inflated)


def repeated_cells_ods(columns: int = 16384, rows: int = 1_000_000) -> bytes:
    """A few hundred bytes of ODS: one cell saying "flood", repeated `columns` times across a
    row that is repeated `rows` times."""
    return odf(
        "ods",
        f'<table:table table:name="Flood"><table:table-row table:number-rows-repeated="{rows}">'
        f'<table:table-cell table:number-columns-repeated="{columns}"><text:p>flood</text:p>'
        "</table:table-cell></table:table-row></table:table>",
    )


def extreme_cells_xlsx() -> bytes:
    """An XLSX whose sheet declares the whole grid and has one cell at each far corner."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet["A1"] = "top left"
    sheet["XFD1048576"] = "bottom right"
    buffer = io.BytesIO()
    book.save(buffer)  # openpyxl declares the dimension A1:XFD1048576
    return buffer.getvalue()


def with_part(package: bytes, name: str, data: bytes) -> bytes:
    """`package` (a ZIP) with its part `name` holding `data` instead."""
    source = zipfile.ZipFile(io.BytesIO(package))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in source.infolist():
            archive.writestr(member, data if member.filename == name else source.read(member))
    return out.getvalue()


def xlsx_with_sheet(sheet_data: bytes) -> bytes:
    """An XLSX whose first sheet holds `sheet_data` (a <sheetData> element)."""
    sheet = (
        b'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats'
        b'.org/spreadsheetml/2006/main">' + sheet_data + b"</worksheet>"
    )
    return with_part(xlsx(), "xl/worksheets/sheet1.xml", sheet)


def lying_package(package: bytes, part: str, inflated: int = 256 << 20) -> bytes:
    """`package` with `part` declaring 1 KiB and holding `inflated` bytes of spaces."""
    source = zipfile.ZipFile(io.BytesIO(package))
    members = [
        (part, deflated_spaces(inflated), 1024, zlib.crc32(b" " * 1024))
        if member.filename == part
        else _true_member(member.filename, source.read(member))
        for member in source.infolist()
    ]
    return zip_of(members)


def pptx_of_paragraphs(paragraphs: int) -> bytes:
    """A PPTX whose first slide's title holds `paragraphs` paragraphs of 26 characters: 200,000
    make 12 MB of XML and 5.4 million characters in a package of 100 KB."""
    deck = pptx_file()
    slide = zipfile.ZipFile(io.BytesIO(deck)).read("ppt/slides/slide1.xml")
    paragraph = b"<a:p><a:r><a:t>lorem ipsum dolor sit amet</a:t></a:r></a:p>"
    end = slide.index(b"</p:txBody>")
    return with_part(
        deck, "ppt/slides/slide1.xml", slide[:end] + paragraph * paragraphs + slide[end:]
    )


def pptx_with_shapes() -> bytes:
    """A slide with a group of two text boxes, a table with a merged cell, a slide number; notes
    whose page also shows the slide's number."""
    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[6])
    group = slide.shapes.add_group_shape()
    group.shapes.add_textbox(0, 0, 100, 100).text_frame.text = "grouped one"
    group.shapes.add_textbox(0, 200, 100, 100).text_frame.text = "grouped two\nsecond line"
    table = slide.shapes.add_table(2, 3, Inches(1), Inches(2), Inches(4), Inches(1)).table
    table.cell(0, 0).merge(table.cell(0, 1))
    table.cell(0, 0).text = "merged"
    table.cell(0, 2).text = "right"
    table.cell(1, 0).text = "a"
    table.cell(1, 1).text = "b"
    table.cell(1, 2).text = "c"
    slide.notes_slide.notes_text_frame.text = "the notes"  # type: ignore[union-attr]
    buffer = io.BytesIO()
    deck.save(buffer)
    return buffer.getvalue()
