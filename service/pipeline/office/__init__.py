"""Office packages (ZIP files of XML parts): spreadsheets, presentations and OpenDocument files,
each part streamed with lxml and released as it is read.

DOCX, the first of them, lives in `service.pipeline.docx`; what every package shares — the check
that no part inflates past what it declares, safe XML parsing, relationships, core properties —
is `package`.
"""
