"""`pdfusion data` (placeholder until its module lands)."""


def register(sub) -> None:  # noqa: ARG001
    return None
