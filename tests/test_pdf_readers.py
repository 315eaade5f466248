"""The page counter against real readers: PDFs built byte by byte (a cross-reference table or stream, so
a reader opens them as written, not repaired), counted by :func:`pdf_pages` and by PDFium and pypdf
(installed for the tests only, never in the pyz) where they read them. A crafted PDF must never count
fewer pages than a reader that takes it sees (pdf.js, which no test here runs, as its source reads)."""

from __future__ import annotations

import io
import re
import struct
import time
import zlib

import pytest

from stockyard.pdfpages import CARRY, KIDS_MAX, MAX_PDF_PAGES, PageCounter, pdf_pages

PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"
CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"


def with_table(objects: dict[int, bytes]) -> bytes:
    """A PDF of ``objects`` (number → its bytes between ``obj`` and ``endobj``), 1 the catalog, with a
    cross-reference table."""
    out, offsets = b"%PDF-1.7\n", {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    size, start = max(objects) + 1, len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number] if number in offsets else b"0000000000 00000 f \n"
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, start)


def repeated_kids(pages: int, count: bytes | None) -> bytes:
    """A page tree of ``pages`` kids that are one page object, its ``/Count`` written as ``count`` (None: no
    count): only the count (or the kids) tells the pages, the page objects do not."""
    kids = b"[" + b"3 0 R " * pages + b"]"
    counted = b"" if count is None else b" /Count " + count
    return with_table({1: CATALOG, 2: b"<< /Type /Pages /Kids %s%s >>" % (kids, counted), 3: PAGE})


def repeated_tree(fanout: int, counts: list[bytes | None]) -> bytes:
    """A page tree ``len(counts)`` levels deep whose every node's ``/Kids`` are ``fanout`` references to
    one node of the next level (the last level's to one page object): readers walk it as ``fanout`` to
    the power of its depth pages; ``counts`` are the levels' ``/Count`` (None: none)."""
    numbers = [2, *range(4, 3 + len(counts))]  # 3 is the page
    objects = {1: CATALOG, 3: PAGE}
    for level, count in enumerate(counts):
        kid = numbers[level + 1] if level + 1 < len(numbers) else 3
        counted = b"" if count is None else b" /Count " + count
        objects[numbers[level]] = b"<< /Type /Pages /Kids [%s]%s >>" % (b" ".join([b"%d 0 R" % kid] * fanout), counted)
    return with_table(objects)


def distinct_kids(pages: int) -> bytes:
    """An ordinary PDF: a page tree of ``pages`` page objects, each its own kid, with its ``/Count``."""
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(pages))
    objects = {1: CATALOG, 2: b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages)}
    return with_table({**objects, **{3 + i: PAGE for i in range(pages)}})


def packed(
    pages: int,
    dictionary: bytes = b"/Type /ObjStm ",
    decoy: bool = True,
    repeat: int = 1,
    header: bytes = b"%d 0 obj\n",
    hidden: bool = False,
) -> bytes:
    """A PDF of ``pages`` whose page tree and pages are in a compressed object stream (its dictionary
    beginning with ``dictionary``, its object's ``header`` with its number at ``%d``) that a
    cross-reference stream points into; ``decoy``: a page object in a comment besides (one page the
    counter sees without the object stream); ``repeat``: each page that many times in the tree's kids (its
    count still ``pages``); ``hidden``: the object stream's object inside another stream's bytes (a reader
    finds it by its offset, wherever it is)."""
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(pages) for _ in range(repeat))
    objects = [b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages)]
    objects += [PAGE] * pages
    offsets, body = [], b""
    for number, obj in enumerate(objects, start=2):
        offsets.append(b"%d %d" % (number, len(body)))
        body += obj + b"\n"
    head = b" ".join(offsets) + b"\n"
    stream, packer = zlib.compress(head + body), 3 + pages
    out = b"%PDF-1.7\n" + (b"% << /Type /Page >>\n" if decoy else b"")
    catalog = len(out)
    out += b"1 0 obj\n" + CATALOG + b"\nendobj\n"
    sizes = b"/N %d /First %d /Filter /FlateDecode /Length %d" % (len(objects), len(head), len(stream))
    inner = header % packer + b"<< %s%s >>\nstream\n%s\nendstream\nendobj\n" % (dictionary, sizes, stream)
    if hidden:
        out += b"%d 0 obj\n<< /Length %d >>\nstream\n" % (packer + 2, len(inner))
    at = len(out)
    out += inner + (b"\nendstream\nendobj\n" if hidden else b"")
    rows = [(0, 0, 65535), (1, catalog, 0), *((2, packer, i) for i in range(len(objects))), (1, at, 0)]
    rows.append((1, len(out), 0))  # the cross-reference stream itself
    table = b"".join(struct.pack(">BIH", *row) for row in rows)
    xref = b"<< /Type /XRef /Size %d /W [1 4 2] /Root 1 0 R /Length %d >>" % (len(rows), len(table))
    start = len(out)
    out += b"%d 0 obj\n%s\nstream\n%s\nendstream\nendobj\n" % (packer + 1, xref, table)
    return out + b"startxref\n%d\n%%%%EOF\n" % start


def readers(data: bytes) -> dict[str, int | None]:
    """The pages PDFium and pypdf see in ``data`` (None: the reader refuses it)."""
    pdfium = pytest.importorskip("pypdfium2")
    pypdf = pytest.importorskip("pypdf")
    seen: dict[str, int | None] = {}
    try:
        seen["pdfium"] = len(pdfium.PdfDocument(data))
    except pdfium.PdfiumError:
        seen["pdfium"] = None
    try:
        seen["pypdf"] = len(pypdf.PdfReader(io.BytesIO(data)).pages)
    except (pypdf.errors.PyPdfError, KeyError, AssertionError, TypeError):
        seen["pypdf"] = None
    return seen


def test_the_builders_make_pdfs_readers_read():
    """The PDFs built here are ones real readers open as written: the test can tell a count from theirs."""
    assert readers(packed(40, decoy=False)) == {"pdfium": 40, "pypdf": 40}
    assert pdf_pages(packed(40, decoy=False)) == 40
    assert readers(distinct_kids(30)) == {"pdfium": 30, "pypdf": 30}
    assert pdf_pages(distinct_kids(30)) == 30
    assert readers(repeated_kids(30, b"30")) == {"pdfium": 30, "pypdf": 30}


@pytest.mark.parametrize("count", [b"900.0", b"900.", b"899.5", b"+900", b"0000000900", b"00000000000900.00"])
def test_a_page_count_written_as_any_number_is_counted(count):
    """A ``/Count`` that is a real number, signed or zero-padded: readers take it as a number (PDFium and
    pypdf see 900 pages; pdf.js's ``Number.isInteger(900.0)`` holds), so the counter does (a fraction
    rounded up); it read no count and held one page object at one page."""
    data = repeated_kids(900, count)
    assert all(pages == 900 for pages in readers(data).values()) or count == b"899.5"
    assert pdf_pages(data) >= 900


def test_a_count_too_large_to_be_a_page_count_is_the_limit():
    """Eight digits and more (any count past the limit, zero-padded or not) hold the limit, not the page
    objects' one."""
    assert pdf_pages(repeated_kids(3, b"123456789")) == MAX_PDF_PAGES
    assert pdf_pages(repeated_kids(3, b"0000000000123456789.5")) == MAX_PDF_PAGES


@pytest.mark.perf  # a time bound: run alone, in the perf phase
@pytest.mark.parametrize("after", [b"", b" 0 R", b".5"])
def test_a_long_run_of_digits_after_a_count_is_read_in_linear_time(after):
    """40 KB of digits after a ``/Count`` (a 54 KB inline PDF): the count by reference's pattern tried the run
    split in two at every place (28 s of CPU; 160 KB of them, minutes); 10 MB of them now read in well under
    a second, and never made into a number."""
    started = time.process_time()  # the parse's CPU: other work on the machine does not count
    assert pdf_pages(repeated_kids(3, b"9" * 40_000 + after)) == MAX_PDF_PAGES
    assert pdf_pages(repeated_kids(3, b"9" * (10 << 20) + after)) == MAX_PDF_PAGES
    assert time.process_time() - started < 2


def test_an_object_stream_without_its_type_is_read_as_pdfjs_reads_it():
    """pdf.js reads an object stream by its ``/First`` and ``/N`` alone (``XRef.fetchCompressed`` checks
    no ``/Type``), where PDFium and pypdf refuse the file: the counter reads a stream whose dictionary
    has a direct ``/First`` as an object stream (it counted the decoy page only)."""
    untyped = packed(900, dictionary=b"")
    assert readers(untyped) == {"pdfium": None, "pypdf": None}  # no reader here takes it: pdf.js does
    assert readers(packed(900)) == {"pdfium": 900, "pypdf": 900}
    assert pdf_pages(untyped) >= 900
    assert pdf_pages(packed(900, dictionary=b"/First 0 ")) >= 900  # an earlier /First: the last one wins


def test_an_outlines_first_and_a_fonts_first_char_are_no_object_streams_type():
    """An outline's ``/First`` (by reference) and a font's ``/FirstChar`` before an image that is not Flate
    leave an ordinary PDF counted exactly; a direct ``/First`` there is an object stream's that cannot be
    inflated: the limit, as one typed ``/ObjStm`` is."""
    image = b"9 0 obj\n<< /Subtype /Image /Filter /DCTDecode /Length 4 >>\nstream\nxxxx\nendstream\nendobj\n"
    data = packed(50, decoy=False)
    ordinary = b"8 0 obj\n<< /Type /Outlines /First 7 0 R /Last 7 0 R >>\nendobj\n<< /FirstChar 32 >>\n" + image
    assert pdf_pages(data.replace(b"1 0 obj\n", ordinary + b"1 0 obj\n", 1)) == 50
    assert pdf_pages(data.replace(b"1 0 obj\n", b"<< /First 7 >>\n" + image + b"1 0 obj\n", 1)) == MAX_PDF_PAGES


@pytest.mark.perf  # a time bound: run alone, in the perf phase
def test_a_long_line_of_percent_signs_is_read_in_linear_time():
    """16 KB of ``%`` on one line (a 22 KB inline PDF): an object's header in a comment was looked for from
    each ``%`` to the line's end (4.5 s of CPU; 256 KB of them, minutes); now from the line's last ``%``
    before it, and 32 KB (~20 s before) read in milliseconds. A header in a comment still holds the limit."""
    started = time.process_time()  # the parse's CPU: other work on the machine does not count
    assert pdf_pages(b"%PDF-1.7\n" + b"%" * (32 << 10)) == MAX_PDF_PAGES
    assert time.process_time() - started < 1
    hidden = packed(900).replace(b"1 0 obj\n", b"%% a %% comment %% 7 0 obj\n1 0 obj\n", 1)
    assert pdf_pages(hidden) == MAX_PDF_PAGES


@pytest.mark.perf  # a time bound: run alone, in the perf phase
@pytest.mark.parametrize("line", [b"/Type %", b"/Count %", b"/First %", b"(1 %", b"<1 %"])
def test_many_marks_before_one_long_comment_are_read_in_linear_time(line):
    """64 KB of ``/Type %`` (or a count's, a first's, or ``1 %`` in a string or hex string: an object's header)
    on one line: each mark's comment was scanned to the line's end (2-7 s of CPU each; 4 MB, hours); a
    comment is now read up to 256 bytes, and a longer one after a mark holds the limit."""
    started = time.process_time()  # the parse's CPU: other work on the machine does not count
    assert pdf_pages(b"%PDF-1.7\n" + line * (64 << 10) + b"\n") == MAX_PDF_PAGES
    assert time.process_time() - started < 1


@pytest.mark.parametrize(
    "where",
    [
        b"/Type %{long}\n/Page",  # a page object, its type past a long comment
        b"/Count %{long}\n900",  # a page tree's count
        b"/First %{long}\n0",  # an object stream's (pdf.js reads it by /First)
        b"(9 0 %{long}\nobj",  # an object's header in a string, where a reader may start an object
        b"(9 %{long}\n0 obj",
    ],
)
def test_a_mark_past_a_long_comment_holds_the_limit(where):
    """A comment longer than the 256 bytes the marks read through, in a mark: a reader reads on past it, so
    the PDF is held at the limit, never at the one decoy page."""
    mark = where.replace(b"{long}", b"x" * 300)
    assert pdf_pages(packed(900).replace(b"1 0 obj\n", mark + b"\n1 0 obj\n", 1)) == MAX_PDF_PAGES
    short = where.replace(b"{long}", b"x" * 200)  # a short one is read through, as before
    assert pdf_pages(packed(900).replace(b"1 0 obj\n", short + b"\n1 0 obj\n", 1)) >= 900


def in_pieces(data: bytes, piece: int) -> int:
    """The pages a :class:`PageCounter` counts in ``data`` fed ``piece`` bytes at a time, its state written
    out and read back between pieces, as an upload's chunks are counted."""
    counter = PageCounter()
    for offset in range(0, len(data), piece):
        counter = PageCounter.loads(counter.dumps())
        part = data[offset : offset + piece]
        counter.feed(part, offset, final=offset + len(part) >= len(data))
    return counter.pages()


@pytest.mark.parametrize("count", [None, b"0", b"-900", b"/Nine", b"1", b"900"])
def test_one_kid_repeated_in_kids_is_never_counted_low(count):
    """900 references to one page object in one ``/Kids``: PDFium and pypdf walk each (900 pages; with a
    valid ``/Count 1`` PDFium says 1 and pypdf 900: the larger is held). The counter read one page object
    and no count (or the count): 1 page. A kid repeated is the limit, whole or in an upload's chunks."""
    data = repeated_kids(900, count)
    seen = readers(data)
    assert max(pages or 0 for pages in seen.values()) == 900, seen
    assert pdf_pages(data) >= 900
    assert in_pieces(data, 1000) == in_pieces(data, CARRY + 1) == pdf_pages(data)


@pytest.mark.parametrize(
    "counts",
    [[None, b"100", b"10"], [None, None, None], [b"-1", b"0", b"/X"], [b"1000", b"100", b"10"]],
    ids=["root-count-missing", "no-counts", "invalid-counts", "valid-counts"],
)
def test_a_tree_of_repeated_kids_is_never_counted_low(counts):
    """Three levels of 10 references to one node (the last to one page object): both readers walk 1,000
    pages, where the counter read the largest inner count (100) or one page object (1)."""
    data = repeated_tree(10, counts)
    assert readers(data) == {"pdfium": 1000, "pypdf": 1000}
    assert pdf_pages(data) == MAX_PDF_PAGES
    assert in_pieces(data, 64) == in_pieces(data, CARRY + 1) == MAX_PDF_PAGES


def test_a_kid_repeated_in_an_object_stream_or_across_arrays_is_the_limit():
    """The same in a compressed object stream (its page tree's kids one page repeated, a count of 1), and a
    reference repeated across two ``/Kids`` arrays (two nodes sharing one page: readers walk it twice)."""
    shared = with_table(
        {
            1: CATALOG,
            2: b"<< /Type /Pages /Kids [4 0 R 5 0 R] >>",
            3: PAGE,
            4: b"<< /Type /Pages /Parent 2 0 R /Kids [3 0 R] >>",
            5: b"<< /Type /Pages /Parent 2 0 R /Kids [3 0 R] >>",
        }
    )
    assert readers(shared) == {"pdfium": 2, "pypdf": 2}
    assert pdf_pages(shared) == MAX_PDF_PAGES
    data = packed(1, decoy=False, repeat=900)
    assert readers(data) == {"pdfium": 1, "pypdf": 900}
    assert pdf_pages(data) == MAX_PDF_PAGES


@pytest.mark.parametrize(
    "kids",
    [
        b"/Kids 4 0 R",  # the array by reference: not read here
        b"/Kids %" + b"x" * 300 + b"\n[" + b"3 0 R " * 900 + b"]",  # a comment longer than the counter reads
        b"/Kids [3 0 R %" + b"x" * 300 + b"\n" + b"3 0 R " * 899 + b"]",
        b"/Kids [3 0 R null " + b"3 0 R " * 899 + b"]",  # something else among the references
    ],
    ids=["by-reference", "long-comment-before", "long-comment-inside", "a-null-among-them"],
)
def test_kids_the_counter_does_not_read_hold_the_limit(kids):
    """A ``/Kids`` whose references the counter cannot all read, where readers walk 900 pages: the limit."""
    tree = b"<< /Type /Pages %s /Count 1 >>" % kids
    data = with_table({1: CATALOG, 2: tree, 3: PAGE, 4: b"[" + b"3 0 R " * 900 + b"]"})
    assert readers(data)["pypdf"] == 900
    assert pdf_pages(data) == MAX_PDF_PAGES
    assert in_pieces(data, 1000) == in_pieces(data, CARRY + 1) == MAX_PDF_PAGES


def test_the_kids_kept_between_chunks_are_bounded():
    """More distinct kids than :data:`KIDS_MAX` (more pages than any held below the limit): the PDF is held at
    the limit and the kids are no longer kept, so an upload's state stays small between its chunks."""
    kids = b" ".join(b"%d 0 R" % (10 + i) for i in range(KIDS_MAX))
    data = with_table({1: CATALOG, 2: b"<< /Type /Pages /Kids [%s] >>" % kids, 3: PAGE})
    counter, largest = PageCounter(), 0
    for offset in range(0, len(data), 4096):
        counter = PageCounter.loads(counter.dumps())
        counter.feed(data[offset : offset + 4096], offset, final=offset + 4096 >= len(data))
        largest = max(largest, len(counter.dumps()))
    assert counter.pages() == pdf_pages(data) == MAX_PDF_PAGES
    assert largest < 64 << 10 and counter.kids == []


@pytest.mark.perf  # a time bound: run alone, in the perf phase
@pytest.mark.parametrize(
    "unit",
    [b"/Kids[]", b"/K#69ds [] ", b"/Kids /X ", b"/Kids [3 0 R ", b"/Kids" + b" " * 600, b"/K/Ki/Kid"],
    ids=["empty-arrays", "escaped-names", "no-arrays", "repeats", "long-gaps", "near-names"],
)
def test_four_megabytes_of_kids_are_read_in_linear_time(unit):
    """4 MB of ``/Kids`` names, arrays and near misses, whole and in an upload's 1 MB chunks: each name
    and reference is a step, so past :data:`KIDS_MAX` of them (or a repeat) no more are read: ~0.2-0.7 s
    here, as before kids were read (all of them read, ~1.7 s)."""
    data = b"%PDF-1.7\n" + unit * ((4 << 20) // len(unit))
    started = time.process_time()  # the parse's CPU: other work on the machine does not count
    assert pdf_pages(data) == MAX_PDF_PAGES
    assert in_pieces(data, 1 << 20) == MAX_PDF_PAGES
    assert time.process_time() - started < 1.2


def updated(first: bytes, objects: dict[int, bytes]) -> bytes:
    """``first`` (a PDF from :func:`with_table`) with an incremental update appended, as Acrobat's Save, a
    signature or a form fill writes one: ``objects`` (number → its bytes) written again or added after the
    file's end, a cross-reference section naming only them and a trailer whose ``/Prev`` is the first one's."""
    start = int(first.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    update, offsets = b"", {}
    for number in sorted(objects):
        offsets[number] = len(first) + len(update)
        update += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    table = len(first) + len(update)
    update += b"xref\n0 1\n0000000000 65535 f \n"
    update += b"".join(b"%d 1\n%010d 00000 n \n" % (number, offsets[number]) for number in sorted(objects))
    size = max(int(re.findall(rb"/Size (\d+)", first)[-1]), max(objects) + 1)
    trailer = b"trailer\n<< /Size %d /Root 1 0 R /Prev %d >>\nstartxref\n%d\n%%%%EOF\n" % (size, start, table)
    return first + update + trailer


def test_an_incremental_update_that_rewrites_the_page_tree_is_counted_as_readers_count_it():
    """An update appending a page rewrites the tree's node, its kids named again in the new version of the
    same object: readers see the new version only (2 pages), and so does the counter, whole and in an
    upload's chunks (it held the limit: a kid named twice, ~$5-9 of a budget for a 2-page PDF)."""
    first = with_table({1: CATALOG, 2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: PAGE})
    data = updated(first, {2: b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>", 4: PAGE})
    assert readers(first) == {"pdfium": 1, "pypdf": 1} and pdf_pages(first) == 1
    assert readers(data) == {"pdfium": 2, "pypdf": 2}
    assert pdf_pages(data) == 2
    assert in_pieces(data, 64) == in_pieces(data, CARRY + 1) == 2


# An object's header as readers take it, its object number at %d: PDFium (and pypdf, the first two) reads a
# generation written as any number ("-0", "0.", "0-0": its digits), and pdf.js's source reads a number up to
# its first byte that is none ("0obj": 0, then 'obj'), a sign alone or before line breaks as 0 ("- obj").
READ_BY_PDFIUM = [b"%d -0 obj\n", b"%d +0 obj\n", b"%d 0.0 obj\n", b"%d 0. obj\n", b"%d .0 obj\n", b"%d --0 obj\n"]
READ_BY_PDFIUM += [b"%d 0-0 obj\n"]
READ_BY_PDFJS = [b"%d 0obj\n", b"%d 0.obj\n", b"%d 0-obj\n", b"%d -0obj\n", b"%d - obj\n", b"%d -\n0 obj\n"]
# pypdf reads the numbers with Python's int() ("0_0" is 0) and then any three bytes, 'obj' or not: no header
# pattern can know these in a stream's bytes without taking many a binary stream's for one; the object
# stream's /Type /ObjStm there (which pypdf needs) holds the PDF at the limit instead.
READ_BY_PYPDF = [b"%d 0_0 obj\n", b"%d 0 xyz\n", b"%d 0 R>>\n"]


@pytest.mark.parametrize("header", READ_BY_PDFIUM + READ_BY_PDFJS + READ_BY_PYPDF)
def test_an_object_header_in_any_shape_a_reader_takes_is_seen_in_a_streams_bytes(header):
    """The object stream's object inside another stream's bytes, its header in a shape a reader takes but
    not ``N G obj`` (digits, white space between): the counter saw no header there and counted the one
    decoy page, where PDFium reads 900 (pdf.js too, by its source). Held at the limit, whole and in an
    upload's chunks; the same header in the open is an ordinary object, counted exactly."""
    data = packed(900, header=header, hidden=True)
    if header in READ_BY_PDFIUM:
        assert readers(data)["pdfium"] == 900
    if header in READ_BY_PYPDF:
        assert readers(data)["pypdf"] == 900
    assert pdf_pages(data) == MAX_PDF_PAGES
    assert in_pieces(data, 64) == in_pieces(data, CARRY + 1) == MAX_PDF_PAGES
    assert pdf_pages(packed(900, header=header, decoy=False)) == 900


@pytest.mark.parametrize("header", [b"%d -0 obj", b"%d 0obj", b"%d 0. obj", b"%d -\n0 obj"])
@pytest.mark.parametrize("where", [b"(%s)", b"%%%s\n", b"<%s>"])
def test_an_object_header_in_any_shape_a_reader_takes_is_seen_in_a_string_or_comment(header, where):
    """As a header in a string, comment or hex string (a reader may start an object there) holds the PDF
    at the limit, so does one in another shape a reader takes (a comment's on one line)."""
    if where == b"%%%s\n" and b"\n" in header:
        header = header.replace(b"\n", b" ")
    mark = where % (header % 9)
    assert pdf_pages(packed(900).replace(b"1 0 obj\n", mark + b"\n1 0 obj\n", 1)) == MAX_PDF_PAGES


def test_an_update_rewriting_the_roots_kids_with_a_page_added_is_counted_as_readers_count_it():
    """A tree of two nodes under its root: an update rewrites the root's kids (its two nodes again and a page
    added beside them) and adds the page; the nodes' own kids are not written again: readers see 3 pages."""
    first = with_table(
        {
            1: CATALOG,
            2: b"<< /Type /Pages /Kids [4 0 R 5 0 R] >>",
            3: PAGE,
            4: b"<< /Type /Pages /Parent 2 0 R /Kids [3 0 R] >>",
            5: b"<< /Type /Pages /Parent 2 0 R /Kids [6 0 R] >>",
            6: PAGE,
        }
    )
    data = updated(first, {2: b"<< /Type /Pages /Kids [4 0 R 5 0 R 7 0 R] >>", 7: PAGE})
    assert readers(first) == {"pdfium": 2, "pypdf": 2} and pdf_pages(first) == 2
    assert readers(data) == {"pdfium": 3, "pypdf": 3}
    assert pdf_pages(data) == 3
    assert in_pieces(data, 64) == in_pieces(data, CARRY + 1) == 3


@pytest.mark.parametrize(
    "objects",
    [
        # a second node naming a page the root names already: readers walk it twice
        {2: b"<< /Type /Pages /Kids [3 0 R 4 0 R] >>", 4: b"<< /Type /Pages /Parent 2 0 R /Kids [3 0 R] >>"},
        # a new node naming the page, the root's new version naming it and the node
        {4: b"<< /Type /Pages /Parent 2 0 R /Kids [3 0 R] >>", 2: b"<< /Type /Pages /Kids [4 0 R 3 0 R] >>"},
        # the rewritten node naming a page twice in its one array
        {2: b"<< /Type /Pages /Kids [3 0 R 3 0 R] >>"},
    ],
    ids=["a-second-node", "the-node-first", "twice-in-the-new-array"],
)
def test_an_update_that_names_a_page_from_a_second_node_or_twice_is_the_limit(objects):
    """An update whose new objects name a page twice in the tree readers walk (a second node naming a page
    the first names, or one array naming it twice): readers walk it each time, the counter holds the limit
    (only a reference named again in a later version of the same object is no repeat)."""
    first = with_table({1: CATALOG, 2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: PAGE})
    data = updated(first, objects)
    assert max(readers(data).values()) == 2, readers(data)
    assert pdf_pages(data) == MAX_PDF_PAGES
    assert in_pieces(data, 64) == in_pieces(data, CARRY + 1) == MAX_PDF_PAGES


def test_a_header_inside_another_object_is_no_later_version():
    """An object's header written inside another object's dictionary (no ``endobj`` between them, where a
    reader reading that object skips it as a key that is no name): its kids are the other object's, so a
    page they name that the header's object named before is a repeat, the limit (it was read as a later
    version of that object: 1 page, where readers walk 2)."""
    crafted = b"<< /Type /Pages /Parent 2 0 R /X 1 2 0 obj /Kids [3 0 R] >>"
    data = with_table({1: CATALOG, 2: b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 1 >>", 3: PAGE, 4: crafted})
    assert max(readers(data).values()) == 2, readers(data)
    assert pdf_pages(data) == MAX_PDF_PAGES
    assert in_pieces(data, 64) == in_pieces(data, CARRY + 1) == MAX_PDF_PAGES
