"""Small pieces shared by the self-contained HTML reports: escaping and figures as data URIs."""

from __future__ import annotations

import base64
import html
import io

__all__ = ["escape", "png_data"]


def png_data(figure) -> tuple[bytes, str]:
    """A matplotlib figure as PNG bytes and as a data URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    data = buffer.getvalue()
    return data, "data:image/png;base64," + base64.b64encode(data).decode()


def escape(text: object) -> str:
    """`text` as HTML text (&, <, >, quotes escaped)."""
    return html.escape(str(text))
