"""The accuracy report's blocks as Markdown and as one standalone HTML page: formatting only.

Blocks are tuples that `_report` lays out:

* ``("h", level, text, collapsed)``: a heading; in HTML a collapsed level-2 heading opens a closed
  ``<details>`` that holds everything up to the next level-2 heading;
* ``("p", text)``, ``("list", items, css_class)``, ``("answers", sentences)`` (the first screen),
  ``("table", header, rows, align)``;
* ``("figure", name, alt)``: an SVG from the report's figures, inlined in HTML (a line in Markdown);
* ``("points",)``: the sortable, filterable per-point table (HTML only; its data in the report).

The HTML needs no network: figures are inline SVG, the table's script and style are in the page.
"""
from __future__ import annotations

import html as _html
import json
import re
from typing import Any, Mapping, Sequence

__all__ = ["markdown", "html"]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(blocks: Sequence[tuple]) -> str:
    """The blocks as GitHub-flavoured Markdown."""
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind in ("list", "answers"):
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            _, header, rows, align = block
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
                     "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "figure":  # figures live inline in report.html only: results/ stays text
            out.append(f"*Figure: {block[2]} (in report.html).*")
        elif kind == "points":
            out.append("*Every point, sortable and filterable: report.html; every point and formula's bytes: "
                       "comparison.csv.*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    text = _html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(\d) %", "\\1\u00a0%", text)  # "12.5 %" never breaks before its sign


def _svg_inline(svg: str, prefix: str) -> str:
    """An SVG document as an element of the page: no XML prolog, ids made unique to the figure."""
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg[svg.index("<svg"):], flags=re.S)  # RDF namespaces, no use
    for ident in set(re.findall(r'\bid="([^"]+)"', svg)):
        new = f"{prefix}-{ident}"
        svg = svg.replace(f'id="{ident}"', f'id="{new}"').replace(f"#{ident})", f"#{new})") \
                 .replace(f'"#{ident}"', f'"#{new}"')
    return svg


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1240px;margin:0 auto;padding:12px 20px 40px;
color:#222;line-height:1.4;font-size:15px}
h1{font-size:22px;margin:6px 0 4px}h2{font-size:18px;margin:1.4em 0 .4em}h3{font-size:15px;margin:1em 0 .3em}
p.intro{margin:0 0 6px;color:#444}
ul.answers{margin:4px 0 6px;padding-left:18px}ul.answers li{margin:2px 0}
figure{margin:0 0 10px}figure svg{max-width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#555}
ul.prov{font-size:13px;color:#444;margin:4px 0;padding-left:18px}dl.terms{font-size:13px;margin:4px 0}
dl.terms dt{font-weight:600;display:inline}dl.terms dd{display:inline;margin:0}
dl.terms dd:after{content:"";display:block}
details{margin:6px 0;border-top:1px solid #ddd;padding-top:4px}summary{cursor:pointer;font-size:17px;font-weight:600}
.scroll{overflow:auto;max-width:100%}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:13px}
th,td{border:1px solid #ccc;padding:2px 6px;vertical-align:top}th{background:#f2f2f2}
td.r,th.r{text-align:right;white-space:nowrap}
code{background:#f4f4f4;padding:0 3px}
#points .tools{font-size:13px;margin:4px 0}#points .tools input[type=search]{width:22em}
#points .box{max-height:480px;overflow:auto;border:1px solid #ccc}#points table{margin:0}
#points th{position:sticky;top:0;cursor:pointer;white-space:nowrap}
#points td{white-space:nowrap}#points td.u{color:#b00}
"""

# The per-point table: rows from the JSON beside it, sorted by a click on a header, filtered by words
# (every word must occur in the row) and by formula. No library, no network.
SCRIPT = r"""
(function(){
const D=JSON.parse(document.getElementById('points-data').textContent);
const box=document.getElementById('points'),tb=box.querySelector('tbody'),q=box.querySelector('input[type=search]'),
 sel=box.querySelector('select'),under=box.querySelector('input[type=checkbox]'),count=box.querySelector('.count');
const NAMES=['model','device','precision','attention','phase','batch','prompt','new','measured',
 'raw predicted','raw error','calibrated predicted','calibrated error'];
let key=10,dir=-1;
function size(b){if(b==null)return'n/a';const u=[[2**40,'TiB'],[2**30,'GiB'],[2**20,'MiB'],[2**10,'KiB']];
 for(const[s,n]of u)if(Math.abs(b)>=s)return(b/s).toPrecision(4)+'\u00a0'+n;return b+'\u00a0B'}
function pc(e){if(e==null||isNaN(e))return'n/a';const v=e*100,a=Math.abs(v);if(v===0)return'0\u00a0%';
 if(a<0.005)return(v<0?'\u2212':'+')+'<0.01\u00a0%';const d=a<100?2:a<1000?1:0;
 return(v<0?'\u2212':'+')+a.toLocaleString('en',{minimumFractionDigits:d,maximumFractionDigits:d})+'\u00a0%'}
function rows(){const f=D.formulas.indexOf(sel.value);return D.rows.map(r=>{const m=r[8],p=r[9][f],c=r[10][f];
 return[...r.slice(0,9),p,p==null||!m?null:(p-m)/m,c,c==null||!m?null:(c-m)/m]})}
function draw(){const words=q.value.toLowerCase().split(/\s+/).filter(Boolean);
 let rs=rows().filter(r=>{const t=r.slice(0,8).join(' ').toLowerCase();
  return words.every(w=>t.includes(w))&&(!under.checked||r[10]<0||r[12]<0)});
 rs.sort((a,b)=>{const x=a[key],y=b[key];if(x==null)return 1;if(y==null)return-1;
  return(typeof x==='number'?x-y:String(x).localeCompare(String(y)))*dir});
 count.textContent=rs.length+' of '+D.rows.length+' points';
 tb.innerHTML=rs.map(r=>'<tr>'+r.map((v,i)=>{const num=i>=5;const t=i==8||i==9||i==11?size(v):
  i==10||i==12?pc(v):String(v);return'<td'+(num?' class="r'+((i==10||i==12)&&v<0?' u':'')+'"':'')+'>'+
  t.replace(/&/g,'&amp;').replace(/</g,'&lt;')+'</td>'}).join('')+'</tr>').join('')}
box.querySelectorAll('th').forEach((th,i)=>th.addEventListener('click',()=>{dir=key===i?-dir:(i>=5?-1:1);key=i;draw()}));
[q,sel,under].forEach(e=>e.addEventListener('input',draw));
draw()})();
"""


def _points_html(points: Mapping[str, Any]) -> str:
    options = "".join(f'<option{" selected" if f == points["default"] else ""}>{_html.escape(f)}</option>'
                      for f in points["formulas"])
    cal = _html.escape(points["cal_label"])
    head = ["model", "device", "precision", "attention", "phase", "batch", "prompt", "new", "measured",
            "predicted", "error", "cal. predicted", "cal. error"]
    ths = "".join(f'<th{" class=r" if i >= 5 else ""}>{_html.escape(h)}</th>' for i, h in enumerate(head))
    data = json.dumps(points["data"], separators=(",", ":")).replace("</", "<\\/")
    return (f'<div id="points"><div class="tools"><label>formula <select>{options}</select></label> '
            '<label>filter <input type="search" placeholder="words, e.g. llama bf16 generate"></label> '
            '<label><input type="checkbox"> underestimates only</label> <span class="count"></span><br>'
            f'measured: the peak; predicted and error: the formula as written; cal.: {cal}. Click a header to '
            'sort.</div>'
            f'<div class="box"><table><thead><tr>{ths}</tr></thead><tbody></tbody></table></div>'
            '<noscript>This table needs JavaScript; comparison.csv beside this page holds every point.</noscript>'
            f'<script type="application/json" id="points-data">{data}</script><script>{SCRIPT}</script></div>')


def _table_html(header, rows, align) -> str:
    cls = ['' if a == "l" else ' class="r"' for a in align]
    head = "".join(f"<th{c}>{_inline(h)}</th>" for h, c in zip(header, cls))
    body = "".join("<tr>" + "".join(f"<td{c}>{_inline(v)}</td>" for v, c in zip(row, cls)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def html(blocks: Sequence[tuple], figures: Mapping[str, str], title: str,
         points: Mapping[str, Any] | None = None) -> str:
    """The blocks as one standalone HTML page: figures inline as SVG, collapsed sections as <details>."""
    body: list[str] = []
    open_details = False
    for block in blocks:
        kind = block[0]
        if kind == "h":
            level, text, collapsed = block[1], block[2], (block[3] if len(block) > 3 else False)
            if level <= 2 and open_details:
                body.append("</details>")
                open_details = False
            if collapsed:
                body.append(f"<details><summary>{_inline(text)}</summary>")
                open_details = True
            else:
                body.append(f"<h{level}>{_inline(text)}</h{level}>")
        elif kind == "p":
            body.append(f"<p{' class=intro' if len(block) > 2 and block[2] else ''}>{_inline(block[1])}</p>")
        elif kind == "answers":
            body.append('<ul class="answers" id="answers">' + "".join(f"<li>{_inline(i)}</li>" for i in block[1])
                        + "</ul>")
        elif kind == "list":
            cls = f' class="{block[2]}"' if len(block) > 2 and block[2] else ""
            if block[2:] and block[2] == "terms":
                body.append('<dl class="terms">' + "".join(
                    f"<dt>{_inline(t)}:</dt> <dd>{_inline(d)}</dd>" for t, d in (i.split(": ", 1) for i in block[1]))
                    + "</dl>")
            else:
                body.append(f"<ul{cls}>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            body.append(_table_html(*block[1:]))
        elif kind == "figure":
            name, alt = block[1], block[2]
            fid = re.sub(r"\W", "-", name.rsplit(".", 1)[0])
            body.append(f'<figure id="{fid}" role="img" aria-label="{_html.escape(alt)}">'
                        f"{_svg_inline(figures[name], fid)}<figcaption>{_inline(alt)}</figcaption></figure>")
        elif kind == "points" and points is not None:
            body.append(_points_html(points))
    if open_details:
        body.append("</details>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
