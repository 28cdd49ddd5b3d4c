"""The hostile shapes of office and mail documents, each fed to the pipeline: refused at
detection or stopped at the limit that names itself, in bounded memory and time."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage

import pytest

from service.errors import CorruptFile, TooLarge
from service.indexing import pipeline_limits
from service.pipeline import Limits, detect_type, extract
from service.pipeline.mail import MAX_CONTAINERS
from service.pipeline.rtf import MAX_DEPTH
from service.settings import Settings
from tests import hostile_files, office_files
from tests.support import cpu_since, cpu_start
from tests.unit.pipeline.test_limits import LIMITS, measure

INFLATED_LIMIT = "more than DOCPROC_MAX_INFLATED_BYTES=33,554,432"


@pytest.mark.parametrize(
    ("bomb", "kind"),
    [
        (office_files.xlsx_bomb, "XLSX"),
        (office_files.pptx_bomb, "PPTX"),
        (lambda: office_files.odf_bomb("ods"), "ODS"),
        (lambda: office_files.odf_bomb("odt"), "ODT"),
        (lambda: office_files.odf_bomb("odp"), "ODP"),
    ],
    ids=["xlsx", "pptx", "ods", "odt", "odp"],
)
def test_a_package_bomb_of_each_kind_is_refused_at_detection_without_inflating_it(
    bomb: object, kind: str
) -> None:
    assert callable(bomb)
    data = bomb()  # about 1 MB declaring and inflating to 1 GiB

    spent, error = measure(lambda: detect_type(data, "bomb.bin", LIMITS))

    assert isinstance(error, TooLarge), error
    assert f"the {kind}'s parts inflate to 1,07" in str(error)
    assert INFLATED_LIMIT in str(error)
    assert spent.peak_bytes < 4 << 20, f"{spent.peak_bytes:,} bytes"


@pytest.mark.parametrize(
    ("package", "part"),
    [
        (office_files.xlsx, "xl/worksheets/sheet1.xml"),
        (office_files.pptx_file, "ppt/slides/slide1.xml"),
        (office_files.ods, "content.xml"),
    ],
    ids=["xlsx", "pptx", "ods"],
)
def test_a_part_inflating_past_what_it_declares_is_corrupt_and_never_inflated_whole(
    package: object, part: str
) -> None:
    assert callable(package)
    lying = office_files.lying_package(package(), part)

    spent, error = measure(lambda: extract(lying, None, LIMITS))

    assert isinstance(error, CorruptFile), error
    assert "inflates to more than the 1,024 bytes it declares" in str(error)
    assert spent.peak_bytes < 16 << 20, f"{spent.peak_bytes:,} bytes"


def test_an_ods_of_a_cell_repeated_across_a_million_rows_stops_at_the_character_limit() -> None:
    flood = office_files.repeated_cells_ods(columns=16384, rows=1_000_000)  # 16 billion cells
    assert len(flood) < 2000

    spent, error = measure(lambda: extract(flood, "flood.ods", LIMITS))

    assert isinstance(error, TooLarge), error
    assert "more than DOCPROC_MAX_CHARS=1,000,000" in str(error)
    assert spent.peak_bytes < 16 << 20, f"{spent.peak_bytes:,} bytes"
    assert spent.seconds < 2


def test_empty_repeats_of_a_whole_sheet_cost_nothing() -> None:
    started = cpu_start()

    extracted = extract(office_files.ods(), "orchard.ods", Limits())

    assert extracted.text.endswith("rake\nrake")
    assert cpu_since(started) < 0.5


def test_an_xlsx_declaring_the_whole_grid_visits_only_its_cells() -> None:
    data = office_files.extreme_cells_xlsx()  # A1:XFD1048576, cells at both corners

    spent, error = measure(lambda: extract(data, "grid.xlsx", LIMITS))

    assert error is None, error
    assert spent.seconds < 0.5
    assert spent.peak_bytes < 4 << 20


def test_a_row_of_millions_of_cells_stops_at_the_character_limit_within_the_row() -> None:
    cells = b'<c t="inlineStr"><is><t>wave</t></is></c>' * 150_000  # 1.05 million characters
    data = office_files.xlsx_with_sheet(b"<sheetData><row>" + cells + b"</row></sheetData>")

    started = cpu_start()
    with pytest.raises(TooLarge, match="the workbook holds more than 1,000,0"):
        extract(data, "wide.xlsx", LIMITS)

    assert cpu_since(started) < 5


def test_a_slide_of_millions_of_characters_stops_at_the_limit_as_it_is_read() -> None:
    # python-pptx parsed the whole package first: 59 MB of slide took 966 MB and 16 s.
    data = office_files.pptx_of_paragraphs(200_000)  # 12 MB of XML, 5.4 million characters

    started = cpu_start()
    with pytest.raises(TooLarge, match="presentation holds more than 1,000,0"):
        extract(data, "long.pptx", LIMITS)

    assert cpu_since(started) < 1


def _bytes_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """What the parts opened from here on hand to their reader, added up as they are read."""
    read = [0]
    original = zipfile.ZipExtFile.read

    def counted(self: zipfile.ZipExtFile, n: int = -1) -> bytes:
        data = original(self, n)
        read[0] += len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counted)
    return read


@pytest.mark.parametrize(
    "body",
    [
        "",  # 400,000 paragraphs
        "<w:p>"
        + "<w:r><w:t>lorem ipsum dolor sit amet consectetur</w:t></w:r>" * 400_000
        + "</w:p>",
    ],
    ids=["paragraphs", "one-paragraph"],
)
def test_a_docx_body_of_millions_of_characters_stops_at_the_limit_as_it_is_read(
    body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # python-docx parsed the whole body first: 56 MB of it took 623 MB and 11 s.
    data = hostile_files.paragraphs_docx(0 if body else 400_000, body=body)
    part = zipfile.ZipFile(io.BytesIO(data)).getinfo("word/document.xml").file_size
    assert part > 20 << 20  # 15 million characters
    read = _bytes_read(monkeypatch)

    started = cpu_start()
    with pytest.raises(
        TooLarge, match=r"Word document holds more than 1,000,0.*DOCPROC_MAX_CHARS="
    ):
        extract(data, "long.docx", LIMITS)

    assert read[0] < part // 4, f"{read[0]:,} of {part:,} bytes read"
    assert cpu_since(started) < 2


def test_a_docx_paragraph_of_nothing_but_markup_is_held_to_the_cpu_budget() -> None:
    bookmarks = '<w:bookmarkStart w:id="0" w:name="b"/>' * 500_000  # 19 MB, no character
    data = hostile_files.paragraphs_docx(0, body=f"<w:p>{bookmarks}</w:p>")
    limits = pipeline_limits(Settings.from_env({"DOCPROC_MAX_CPU_SECONDS": "0.1"}))

    started = cpu_start()
    with pytest.raises(TooLarge, match=r"CPU time \(in the body\), .*DOCPROC_MAX_CPU_SECONDS=0.1"):
        extract(data, "marked.docx", limits)

    assert cpu_since(started) < 0.3  # 0.12 s checked every 4,096 elements; 0.3-0.5 at 65,536


def test_sheets_and_slides_count_against_the_page_limit() -> None:
    limits = Limits(max_pages=1, names={"max_pages": "DOCPROC_MAX_PAGES"})

    with pytest.raises(TooLarge, match="workbook has 2 sheets, more than DOCPROC_MAX_PAGES=1"):
        extract(office_files.xlsx(), limits=limits)
    with pytest.raises(TooLarge, match="has 2 slides, more than DOCPROC_MAX_PAGES=1"):
        extract(office_files.pptx_file(), limits=limits)
    with pytest.raises(TooLarge, match="has over 2 sheets, more than DOCPROC_MAX_PAGES=1"):
        extract(office_files.ods(), limits=limits)
    with pytest.raises(TooLarge, match="has over 2 slides, more than DOCPROC_MAX_PAGES=1"):
        extract(office_files.odp(), limits=limits)


@pytest.mark.parametrize("kind", ["xlsx", "pptx_file", "ods", "odt", "rtf", "eml"])
def test_the_cpu_budget_ends_each_reader_naming_its_limit(kind: str) -> None:
    limits = pipeline_limits(Settings.from_env({"DOCPROC_MAX_CPU_SECONDS": "0.000001"}))

    with pytest.raises(TooLarge, match=r"CPU time .*DOCPROC_MAX_CPU_SECONDS=1e-06"):
        extract(getattr(office_files, kind)(), limits=limits)


def test_entities_are_never_expanded() -> None:
    laughs = (
        '<!DOCTYPE d [<!ENTITY a "haha"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
    )
    content = (
        '<?xml version="1.0" encoding="UTF-8"?>' + laughs + "<office:document-content "
        f"{office_files.ODF_NAMESPACES}><office:body><office:text><text:p>before &d; after"
        "</text:p></office:text></office:body></office:document-content>"
    )
    package = office_files.with_part(office_files.odt(), "content.xml", content.encode())

    spent, error = measure(lambda: extract(package, "laughs.odt", LIMITS))

    assert error is None or isinstance(error, CorruptFile), error
    assert spent.peak_bytes < 4 << 20


# --- mail ---------------------------------------------------------------------------------------


def _nested_message(depth: int) -> bytes:
    message = EmailMessage()
    message.set_content("the innermost words")
    for _ in range(depth):
        outer = EmailMessage()
        outer.make_mixed()
        outer.attach(message)
        message = outer
    message["From"] = "a@example.org"
    message["To"] = "b@example.org"
    message["Subject"] = f"{depth} deep"
    return message.as_bytes()


def test_a_message_nesting_parts_deeper_than_the_bound_is_too_large() -> None:
    assert "the innermost words" in extract(_nested_message(10)).text

    with pytest.raises(TooLarge, match="nests parts more than 32 deep"):
        extract(_nested_message(40))


def test_a_message_declaring_too_many_containers_is_refused_before_parsing() -> None:
    head = b"From: a@example.org\nTo: b@example.org\nSubject: many\n\n"
    data = head + b"Content-Type: multipart/mixed; boundary=x\n" * (MAX_CONTAINERS + 1)

    started = cpu_start()
    with pytest.raises(TooLarge, match=f"declares {MAX_CONTAINERS + 1} multipart"):
        extract(data)

    assert cpu_since(started) < 0.5


def test_a_huge_attachment_is_named_and_never_decoded() -> None:
    message = EmailMessage()
    message["From"] = "a@example.org"
    message["To"] = "b@example.org"
    message["Subject"] = "the big one"
    message.set_content("see attached")
    message.add_attachment(bytes(30 << 20), maintype="application", subtype="zip",
                           filename="archive.zip")  # fmt: skip
    data = message.as_bytes()  # 40 MB of base64

    spent, error = measure(lambda: extract(data, "big.eml", LIMITS))

    assert error is None, error
    # Parsed whole, the email package took 330 MB for it.
    assert spent.peak_bytes < 4 << 20, f"{spent.peak_bytes:,} bytes"


def test_a_body_in_base64_is_still_read() -> None:
    message = EmailMessage()
    message["From"] = "a@example.org"
    message["To"] = "b@example.org"
    message["Subject"] = "encoded"
    message.set_content("the body in base64", cte="base64")
    message.add_attachment(b"inline picture", maintype="image", subtype="png")

    extracted = extract(message.as_bytes())

    assert "the body in base64" in extracted.text
    assert "Attachments: unnamed image/png" in extracted.text


# --- RTF ----------------------------------------------------------------------------------------


def test_rtf_nested_deeper_than_the_bound_is_refused_in_linear_time() -> None:
    deep = b"{\\rtf1 " + b"{" * 1_000_000 + b"x" + b"}" * 1_000_000 + b"}"

    started = cpu_start()
    with pytest.raises(TooLarge, match=f"nests groups more than {MAX_DEPTH:,} deep"):
        extract(deep)

    assert cpu_since(started) < 1


def test_an_rtf_bin_block_is_jumped_over_whatever_it_holds() -> None:
    payload = b"{}}}\\par junk" * 2_000_000  # 26 MB of braces and words
    data = b"{\\rtf1\\ansi before {\\*\\objdata\\bin%d " % len(payload) + payload + b"} after}"

    started = cpu_start()
    extracted = extract(data)

    assert extracted.text == "before after"
    assert cpu_since(started) < 1


def test_rtf_text_beyond_the_character_limit_is_too_large() -> None:
    data = b"{\\rtf1 " + b"lorem ipsum \\par " * 200_000 + b"}"

    with pytest.raises(TooLarge, match=r"RTF document holds more than .* DOCPROC_MAX_CHARS"):
        extract(data, limits=LIMITS)
