"""Documents for people: the printable invoice, the customer statement, their PDFs."""
