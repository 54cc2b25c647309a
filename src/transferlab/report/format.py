"""The report's document model and the formatting every section shares: blocks built once,
rendered as Markdown and as one self-contained HTML page, so the two cannot drift apart."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from typing import Any


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def _d(x: float) -> str:
    """A signed difference; +0.0 added so that a bootstrap's -0.0 prints as +0.0000."""
    return f"{x + 0.0:+.4f}"


def _sd(x: float | None) -> str:
    return "cannot tell" if x is None else f"{x:.4f}"


def _inline(text: str) -> str:
    """Markdown's `code`, **bold** and *emphasis* in HTML; everything else escaped. Code
    spans are cut out first, so a * inside one stays literal."""
    out = []
    for i, part in enumerate(html.escape(text).split("`")):
        if i % 2:
            out.append(f"<code>{part}</code>")
            continue
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", part)
        out.append(part)
    return "".join(out)


@dataclass
class Document:
    """Blocks: ("h1"|"h2"|"p"|"pre", text), ("list", items), ("table", header, rows),
    ("img", name, alt), and ("card_begin",) ... ("card_end",) around the verdict card (a
    framed box in HTML, a rule under it in Markdown). Text may use Markdown's **bold**,
    *emphasis* and `code`."""

    blocks: list[tuple] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def add(self, *block: Any) -> None:
        self.blocks.append(block)

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            kind = b[0]
            if kind in ("h1", "h2"):
                out.append(("# " if kind == "h1" else "## ") + b[1])
            elif kind == "p":
                out.append(b[1])
            elif kind == "list":
                out.extend(f"- {item}" for item in b[1])
            elif kind == "pre":
                out.append("```\n" + b[1].rstrip() + "\n```")
            elif kind == "table":
                header, rows = b[1], b[2]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
                out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
            elif kind == "img":
                out.append(f"![{b[2]}]({b[1]})")
            elif kind == "card_begin":
                continue
            elif kind == "card_end":
                out.append("---")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        e = html.escape
        body = []
        for b in self.blocks:
            kind = b[0]
            if kind in ("h1", "h2"):
                body.append(f"<{kind}>{e(b[1])}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif kind == "list":
                body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in b[1]) + "</ul>")
            elif kind == "pre":
                body.append(f"<pre>{e(b[1])}</pre>")
            elif kind == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in b[1])
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2]
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(self.figures[b[1]]).decode()
                body.append(f'<figure><img alt="{e(b[2])}" src="data:image/png;base64,{data}"></figure>')
            elif kind == "card_begin":
                body.append('<section class="card">')
            elif kind == "card_end":
                body.append("</section>")
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px}"
            "td{text-align:right}td:first-child,td:nth-child(2){text-align:left}th{background:#f3f3f3}"
            "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"
            # the first screen (1280 x 800): the verdict card, then its figure at most 360 px high
            # (in px, not vh: the layout must not depend on the window's height), whatever the models
            ".card{border:2px solid #2a6;border-radius:8px;padding:.2em 1em .6em;background:#f6fbf8}"
            ".card h2{margin:.3em 0}.card p{margin:.35em 0}.card table{margin-top:.4em}"
            "h1{margin:.2em 0 .4em}.card+figure{margin:.6em 0}.card+figure img{max-height:360px}"
        )
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
        )
