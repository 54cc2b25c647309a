"""The report a practitioner decides from (Markdown and one self-contained HTML page)."""
