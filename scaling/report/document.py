"""The report's text: one document built as a list of
blocks and rendered twice, as Markdown and as self-contained HTML, so the two always say
the same thing."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- documents
# The report is built once as a list of blocks and rendered twice (Markdown, HTML), so the
# two files always say the same thing.


@dataclass
class Link:
    text: str
    href: str


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "p" | "ul" | "table" | "img"
    text: str = ""
    items: Sequence[Any] = ()  # ul: strings; table: rows of cells (str | Link)
    header: Sequence[str] = ()
    path: str = ""  # img: relative to DIR
    data: bytes = b""  # img: the PNG


def _md_cell(c: Any) -> str:
    s = f"[{c.text}]({c.href})" if isinstance(c, Link) else str(c)
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "ul":
            out.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                     "|" + "|".join("---" for _ in b.header) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.items]
            out.append("\n".join(lines))
        elif b.kind == "img":
            out.append(f"![{b.path}]({b.path})\n\n*{b.text}*")
    return "\n\n".join(out) + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-style: italic; color: #555; }
ul.warn li { color: #8a4b00; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


def _html_inline(text: str) -> str:
    """Escape, then turn Markdown's `code` and **bold** into tags (all the report uses)."""
    s = html.escape(text)
    parts = s.split("`")
    s = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = s.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _html_cell(c: Any) -> str:
    if isinstance(c, Link):
        return f'<a href="{html.escape(c.href, quote=True)}">{html.escape(c.text)}</a>'
    return _html_inline(str(c))


def render_html(blocks: list[Block], title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(f"<{b.kind}>{_html_inline(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_html_inline(b.text)}</p>")
        elif b.kind == "ul":
            cls = ' class="warn"' if b.text == "warn" else ""
            out.append(f"<ul{cls}>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items)
                       + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                           for row in b.items)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "img":
            data = base64.b64encode(b.data).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(b.path, quote=True)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>'
                       f"{_html_inline(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
