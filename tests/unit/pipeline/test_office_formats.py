"""Spreadsheets, presentations, OpenDocument, RTF and mail: each built by its own writer in the
test, detected from its content, its text and metadata extracted."""

from __future__ import annotations

import contextlib
import io
import re
import zipfile
import zlib
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from email.message import EmailMessage

import docx
import openpyxl
import pytest
from docx.oxml import parse_xml

from service.errors import CorruptFile, ProcessingError, UnsupportedType
from service.pipeline import detect_type, extract
from tests import office_files
from tests.corpus import docx_sample
from tests.hostile_files import zip_members_marked, zip_of
from tests.office_files import WHEN

ODF_CREATED = datetime(2024, 3, 5, 9, 30, 0, 123456, tzinfo=UTC)
ODF_MODIFIED = datetime(2024, 4, 1, 12, 0, tzinfo=UTC)


def test_xlsx_rows_are_lines_under_their_sheet_names_with_the_workbook_properties() -> None:
    extracted = extract(office_files.xlsx("marmalade"), "stock.xlsx")

    assert extracted.detected_type == "xlsx"
    assert extracted.text == (
        "Stock\nItem | Count | Fresh\nmarmalade jars | 12 | TRUE\nfar corner\n\n"
        "Notes\norder more in spring"
    )
    assert (extracted.title, extracted.author, extracted.created) == (
        "Pantry",
        "Ada Lovelace",
        WHEN,
    )
    assert extracted.page_count == 2, "one page per sheet"


def test_xlsx_dates_and_times_are_shown_as_dates_by_their_number_format() -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append([date(2024, 1, 2), datetime(2024, 1, 2, 10, 30), time(9, 15), 45293, 2.5, 7])
    sheet["D1"].number_format = 'dd"."mm"."yyyy'  # a custom date format
    sheet["E1"].number_format = '0.0 "days"'  # letters of a date, but quoted
    sheet["F1"].number_format = "[Red]#,##0"
    buffer = io.BytesIO()
    book.save(buffer)

    row = extract(buffer.getvalue()).text.splitlines()[1]

    assert row == "2024-01-02 | 2024-01-02 10:30:00 | 09:15:00 | 2024-01-02 | 2.5 | 7"


def test_pptx_slides_come_in_order_each_with_its_notes_and_tables() -> None:
    extracted = extract(office_files.pptx_file("lighthouse"), "deck.pptx")

    assert extracted.detected_type == "pptx"
    assert extracted.text == (
        "The lighthouse keeper\n\nlamps are trimmed nightly\n\nmention the storm of 1910\n\n"
        "Rota\n\nMonday | Ewan"
    )
    assert (extracted.title, extracted.author, extracted.created) == (
        "Keeping the light",
        "Grace Hopper",
        WHEN,
    )
    assert extracted.page_count == 2


def test_pptx_groups_merged_cells_and_notes_without_the_slide_number() -> None:
    extracted = extract(office_files.pptx_with_shapes())

    assert extracted.text == (
        "grouped one\n\ngrouped two\nsecond line\n\nmerged | right\na | b | c\n\nthe notes"
    )


def test_docx_yields_text_boxes_once_footnotes_headers_footers_and_its_properties() -> None:
    extracted = extract(office_files.docx_with_everything(), "minutes.docx")

    assert extracted.text == (
        "The body speaks of tides.\n\nBoxed aside about gulls\n\nA footnote on barnacles.\n\n"
        "Harbour Board minutes\n\nConfidential draft"
    )
    assert (extracted.author, extracted.created, extracted.modified) == (
        "Mary Shelley",
        WHEN,
        WHEN,
    )


def test_docx_headers_shared_by_sections_appear_once_and_unlinked_ones_too() -> None:
    document = docx.Document()
    document.add_paragraph("First part.")
    document.sections[0].header.paragraphs[0].text = "Shared running head"
    document.add_section()
    document.add_paragraph("Second part.")
    third = document.add_section()
    third.header.is_linked_to_previous = False
    third.header.paragraphs[0].text = "Appendix head"
    buffer = io.BytesIO()
    document.save(buffer)

    text = extract(buffer.getvalue()).text

    assert text.count("Shared running head") == 1
    assert text.endswith("Shared running head\n\nAppendix head")


def test_docx_reads_inserted_text_fields_and_content_controls_not_deleted_text() -> None:
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    document = docx.Document()
    document.add_paragraph("Opening.")
    contents = f"<w:sdt {w}><w:sdtContent><w:p><w:r><w:t>Contents entry</w:t></w:r></w:p>"
    document.element.body.insert(1, parse_xml(contents + "</w:sdtContent></w:sdt>"))
    paragraph = document.add_paragraph("kept ")._p
    for inline in (
        f'<w:ins {w} w:id="1" w:author="a"><w:r><w:t>inserted </w:t></w:r></w:ins>',
        f'<w:del {w} w:id="2" w:author="a"><w:r><w:delText>deleted </w:delText></w:r></w:del>',
        f'<w:moveFrom {w} w:id="3" w:author="a"><w:r><w:t>moved away </w:t></w:r></w:moveFrom>',
        f'<w:fldSimple {w} w:instr="AUTHOR"><w:r><w:t>Ada </w:t></w:r></w:fldSimple>',
        f"<w:sdt {w}><w:sdtContent><w:r><w:t>control</w:t></w:r></w:sdtContent></w:sdt>",
    ):
        paragraph.append(parse_xml(inline))
    buffer = io.BytesIO()
    document.save(buffer)

    text = extract(buffer.getvalue()).text

    assert text == "Opening.\n\nContents entry\n\nkept inserted Ada control"


def test_docx_cells_merged_down_repeat_the_top_cell_and_across_appear_once() -> None:
    document = docx.Document()
    table = document.add_table(rows=3, cols=3)
    table.cell(0, 0).merge(table.cell(2, 0)).text = "tall"
    table.cell(0, 1).merge(table.cell(0, 2)).text = "wide"
    table.cell(1, 1).text = "b"
    table.cell(2, 2).text = "c"
    buffer = io.BytesIO()
    document.save(buffer)

    assert extract(buffer.getvalue()).text == "tall | wide\ntall | b |\ntall | | c"


def test_a_strict_open_xml_docx_is_refused_saying_how_to_save_it() -> None:
    source = zipfile.ZipFile(io.BytesIO(docx_sample().data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "word/document.xml":
                data = data.replace(
                    b"http://schemas.openxmlformats.org/wordprocessingml/2006/main",
                    b"http://purl.oclc.org/ooxml/wordprocessingml/main",
                )
            archive.writestr(member.filename, data)

    with pytest.raises(UnsupportedType, match=r"Strict Open XML.*save it as a Word Document"):
        extract(out.getvalue(), "strict.docx")


def test_a_docx_without_core_properties_has_no_made_up_ones() -> None:
    # python-docx makes up a title ("Word Document") and times for a package without them.
    source = docx_sample().data
    archive = zipfile.ZipFile(io.BytesIO(source))
    members = []
    for member in archive.infolist():
        if member.filename == "docProps/core.xml":
            continue
        data = archive.read(member)
        if member.filename == "_rels/.rels":
            data = re.sub(rb"<Relationship [^>]*core-properties[^>]*/>", b"", data)
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = compressor.compress(data) + compressor.flush()
        members.append((member.filename, packed, len(data), zlib.crc32(data)))

    extracted = extract(zip_of(members))

    assert (extracted.author, extracted.created, extracted.modified) == (None, None, None)


def test_odt_paragraphs_notes_and_tables_with_meta() -> None:
    extracted = extract(office_files.odt("periwinkle"), "shore.odt")

    assert extracted.detected_type == "odt"
    assert (
        extracted.text == "The periwinkle shore\n\nLow tide at dawn.\n\nA note on kelp.\n\ncrab | 3"
    )
    assert (extracted.title, extracted.author, extracted.page_count) == (
        "Tide tables",
        "Rachel Carson",
        2,
    )
    assert (extracted.created, extracted.modified) == (ODF_CREATED, ODF_MODIFIED)


def test_odt_text_deleted_by_tracked_changes_is_left_out() -> None:
    body = (
        "<text:tracked-changes><text:changed-region text:id='c1'><text:deletion>"
        "<text:p>struck out</text:p></text:deletion></text:changed-region></text:tracked-changes>"
        "<text:p>kept<text:change text:change-id='c1'/></text:p>"
    )

    assert extract(office_files.odf("odt", body)).text == "kept"


def test_ods_repeats_cells_that_hold_something_and_never_the_empty_rest() -> None:
    extracted = extract(office_files.ods("quince"), "orchard.ods")

    assert extracted.detected_type == "ods"
    assert extracted.text == "Orchard\nFruit | quince | quince\n\nShed\nrake\nrake"
    assert extracted.page_count == 2, "one page per sheet"
    assert extracted.author == "Rachel Carson"


def test_odp_slides_and_notes_in_order() -> None:
    extracted = extract(office_files.odp("albatross"), "talk.odp")

    assert extracted.detected_type == "odp"
    assert extracted.text == "Flight of the albatross\n\nsay it slowly\n\nNesting grounds"
    assert extracted.page_count == 2


def test_rtf_text_and_info_without_pictures_or_tables_of_fonts() -> None:
    extracted = extract(office_files.rtf("sextant"), "notes.rtf")

    assert extracted.detected_type == "rtf"
    assert extracted.text == "The sextant and the café chart.\nSecond line\u2019s end."
    assert (extracted.title, extracted.author) == ("Navigation notes", "Matthew Flinders")
    assert extracted.created == datetime(2024, 3, 5, 9, 30, tzinfo=UTC)
    assert extracted.modified == datetime(2024, 4, 1, 12, 0, tzinfo=UTC)


def test_rtf_tables_put_each_row_on_a_line() -> None:
    table = rb"{\rtf1\ansi \trowd a\cell b\cell\row \trowd c\cell d\cell\row}"

    assert extract(table).text == "a | b\nc | d"


@pytest.mark.parametrize("html_only", [False, True], ids=["plain-and-html", "html-only"])
def test_eml_headers_body_and_attachment_names(html_only: bool) -> None:
    extracted = extract(office_files.eml("cormorant", html_only=html_only), "report.eml")

    assert extracted.detected_type == "eml"
    headers, body, attachments = extracted.text.split("\n\n")
    assert headers == (
        "From: Ann Bonny <ann@example.org>\nTo: Mary Read <mary@example.org>\n"
        "Subject: Sighting report\nDate: Tue, 05 Mar 2024 09:30:00 +0000"
    )
    assert body.startswith("A cormorant on the rocks.")
    assert "<b>" not in body
    assert attachments == "Attachments: logbook.bin"
    assert (extracted.title, extracted.author, extracted.created) == (
        "Sighting report",
        "Ann Bonny <ann@example.org>",
        WHEN,
    )


def test_eml_encoded_words_and_charsets_are_decoded() -> None:
    message = EmailMessage()
    message["From"] = "Zoë <zoe@example.org>"
    message["Date"] = "Tue, 05 Mar 2024 09:30:00 +0000"
    message["Subject"] = "Grüße aus Köln"
    message.set_content("Schöne Grüße", charset="iso-8859-1", cte="quoted-printable")

    extracted = extract(message.as_bytes())

    assert extracted.title == "Grüße aus Köln"
    assert "From: Zoë <zoe@example.org>" in extracted.text
    assert "Schöne Grüße" in extracted.text


# --- detection ----------------------------------------------------------------------------------

BUILT: dict[str, Callable[[], bytes]] = {
    "xlsx": office_files.xlsx,
    "pptx": office_files.pptx_file,
    "odt": office_files.odt,
    "ods": office_files.ods,
    "odp": office_files.odp,
    "rtf": office_files.rtf,
    "eml": office_files.eml,
}


@pytest.mark.parametrize("kind", list(BUILT))
@pytest.mark.parametrize("filename", [None, "upload.txt", "upload.docx"])
def test_each_format_is_told_by_its_content_not_its_name(kind: str, filename: str | None) -> None:
    assert detect_type(BUILT[kind](), filename) == kind


@pytest.mark.parametrize(
    "text",
    [
        b"Title: Harbour notes\nAuthor: me\n\nThe tide came in.\n",
        b"---\nfrom: me\nsubject: front matter\n---\n# Heading\n",
        b"From: Ann\n\nJust one field, not named .eml.\n",
        b"Subject: lunch\nTo: all\n\nNo From.\n",
        b"From: Ann\nTo: Mary\nSubject: a header block\nthat does not end in a blank line\n",
        b"Dear Ann,\nFrom: here\nTo: there\nSubject: x\n\n",
    ],
    ids=["note-fields", "front-matter", "one-field", "no-from", "no-blank-line", "prose-first"],
)
def test_text_and_markdown_are_not_mistaken_for_mail(text: bytes) -> None:
    assert detect_type(text, "note.txt") in {"text", "markdown"}


def test_a_mail_header_block_is_mail_and_an_eml_name_breaks_the_tie() -> None:
    message = b"From: Ann <a@example.org>\r\nTo: b@example.org\r\nSubject: Hi\r\n\r\nBody\r\n"
    saved = b"From - Tue Mar 05 09:30:00 2024\r\n" + message
    lone = b"Subject: only this\n\nbody\n"

    assert detect_type(message) == "eml"
    assert detect_type(saved) == "eml"
    assert detect_type(lone, "note.txt") == "text"
    assert detect_type(lone, "saved.eml") == "eml"


def test_legacy_office_files_stay_refused_saying_what_to_do() -> None:
    with pytest.raises(UnsupportedType, match=r"legacy Office file .*save it as .docx, .xlsx"):
        detect_type(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512), "budget.xls")


def test_a_password_protected_office_file_is_not_called_legacy() -> None:
    container = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(1000)
    encrypted = container + "EncryptedPackage".encode("utf-16-le") + bytes(100)

    with pytest.raises(UnsupportedType, match="password-protected Office file"):
        detect_type(encrypted, "budget.xlsx")


def test_a_zip_package_that_is_encrypted_or_compressed_otherwise_is_refused_saying_so() -> None:
    """zipfile raises RuntimeError for the one and NotImplementedError for the other (WinZip
    AES, method 99): neither was caught, and the upload was a 500."""
    encrypted = zip_members_marked(office_files.xlsx(), encrypted=True)
    aes = zip_members_marked(office_files.xlsx(), method=99)

    with pytest.raises(UnsupportedType, match=r"encrypted ZIP package .*without one"):
        detect_type(encrypted, "book.xlsx")
    with pytest.raises(UnsupportedType, match="compressed with method 99"):
        detect_type(aes, "book.xlsx")
    with pytest.raises(UnsupportedType, match="encrypted ZIP package"):
        extract(encrypted, "book.xlsx")


def test_an_opendocument_drawing_is_refused_by_its_mimetype() -> None:
    drawing = office_files.odf(
        "odt", "<text:p>x</text:p>", mimetype="application/vnd.oasis.opendocument.graphics"
    )

    with pytest.raises(UnsupportedType, match=r"opendocument\.graphics is not supported"):
        detect_type(drawing)


def test_a_damaged_package_is_typed_by_its_name_or_first_bytes_and_read_as_corrupt() -> None:
    whole = office_files.ods()
    cut = whole[: len(whole) // 2]

    assert detect_type(cut) == "ods"  # the mimetype member comes first
    assert detect_type(office_files.xlsx()[:2000], "book.xlsx") == "xlsx"
    with pytest.raises(CorruptFile, match="not a valid OpenDocument spreadsheet"):
        extract(cut)


def test_a_password_protected_opendocument_file_says_so() -> None:
    package = office_files.odf("odt", "<text:p>x</text:p>", manifest="<manifest:encryption-data/>")

    with pytest.raises(UnsupportedType, match="protected by a password"):
        extract(package)


@pytest.mark.parametrize("kind", list(BUILT))
def test_no_library_exception_escapes_from_damaged_files(kind: str) -> None:
    whole = BUILT[kind]()
    for cut in range(64, len(whole), max(len(whole) // 20, 1)):
        for damaged in (whole[:cut], whole[:cut] + bytes(64) + whole[cut + 64 :]):
            with contextlib.suppress(ProcessingError):
                extract(damaged)
