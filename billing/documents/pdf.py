"""HTML documents to PDF with WeasyPrint (a maintained renderer; Pango does the text).

WeasyPrint is a dependency of the package, but it needs the system's Pango library
(``apt-get install libpango-1.0-0 libpangoft2-1.0-0``): when that is missing the error
says so in one line instead of a traceback.
"""

from __future__ import annotations


class PdfError(RuntimeError):
    """The PDF cannot be made here (renderer or its system libraries missing)."""


def html_to_pdf(html: str) -> bytes:
    """The page as PDF bytes; the page's own CSS (``@page``) sets size and margins."""
    try:
        import weasyprint
    except (ImportError, OSError) as e:  # OSError: Pango or HarfBuzz not installed
        raise PdfError(f"PDF output needs WeasyPrint and Pango: {e}") from None
    return bytes(weasyprint.HTML(string=html).write_pdf())
