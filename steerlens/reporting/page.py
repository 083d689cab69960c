"""The offline report page, ``figures/index.html``: the run's configuration, its summary
tables, every figure (interactive; ``plotly.min.js`` written once beside the page, never
fetched from a CDN) and a browser for generations (pick user, method, α and gate; read the
prompt, the user's preferred response, the unsteered and the steered text side by side).

The page records script errors and the number of rendered figures on ``<body>``
(``data-errors``, ``data-rendered``) so a headless browser can check it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

__all__ = ["append_links", "write_report", "write_user_card"]

_CSS = """
body{font-family:Inter,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#2d2a26;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px} header p{margin:6px 0 0;color:#ddd;font-size:14px}
nav{padding:8px 32px;background:#eee;font-size:14px;display:flex;flex-wrap:wrap;gap:4px 14px}
nav a{color:#8a4b08}
main{padding:8px 32px 40px} section{margin:26px 0}
h2{font-size:18px;border-bottom:2px solid #e8731a;padding-bottom:4px}
table.data{border-collapse:collapse;font-size:13px;background:#fff}
table.data td,table.data th{border:1px solid #ddd;padding:4px 8px;text-align:right}
table.data th{background:#f3efe8}
table.data td:first-child,table.data th:first-child{text-align:left}
.note{background:#fff4e5;border-left:4px solid #e8731a;padding:8px 12px;font-size:14px}
.headline{background:#fff;border:1px solid #e3e3e3;border-left:6px solid #2a7f62;
padding:6px 18px;font-size:15px;line-height:1.5;max-width:1100px}
.headline li{margin:6px 0}
.tablewrap{overflow-x:auto;max-width:100%}
.figure{background:#fff;border:1px solid #e3e3e3;margin:14px 0;max-width:100%;overflow-x:auto}
.cols{flex-wrap:wrap} .cols div{min-width:220px}
@media (max-width:700px){main,header,nav{padding-left:10px;padding-right:10px}}
.browser select{margin-right:12px;font-size:14px}
.cols{display:flex;gap:14px;margin-top:12px}
.cols div{flex:1;background:#fff;border:1px solid #ddd;padding:10px;white-space:pre-wrap;
font-size:14px;min-height:60px}
.cols h3{margin:0 0 6px;font-size:14px;color:#8a4b08}
pre.config{background:#fff;border:1px solid #ddd;padding:10px;font-size:12px;overflow-x:auto}
"""

# Errors are recorded before anything else runs; the figure count once the page has loaded.
_HEAD_JS = """
window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push(String(e.message));});
(function(){var ce=console.error;console.error=function(){
  window.__errors.push(Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};})();
"""

_BROWSER_JS = """
(function(){
  var data=JSON.parse(document.getElementById('gen-data').textContent);
  var keys=['user','method','alpha','gate'];
  var sel={};
  keys.forEach(function(k){sel[k]=document.getElementById('pick-'+k);});
  function uniq(rows,k){var s={};rows.forEach(function(r){s[r[k]]=1;});
    return Object.keys(s).sort(function(a,b){return isNaN(a)||isNaN(b)?(a<b?-1:a>b?1:0):a-b;});}
  function fill(k,rows){var cur=sel[k].value;sel[k].innerHTML='';
    uniq(rows,k).forEach(function(v){var o=document.createElement('option');o.value=v;
      o.textContent=v;sel[k].appendChild(o);});
    if(uniq(rows,k).indexOf(cur)>=0){sel[k].value=cur;}}
  function update(changed){
    var rows=data;
    for(var i=0;i<keys.length;i++){var k=keys[i];
      if(i>keys.indexOf(changed)){fill(k,rows);}
      rows=rows.filter(function(r){return String(r[k])===sel[k].value;});}
    var list=document.getElementById('gen-list');list.innerHTML='';
    rows.forEach(function(r){
      var box=document.createElement('div');box.className='item';
      var h=document.createElement('p');var b=document.createElement('b');
      b.textContent='prompt';h.appendChild(b);
      h.appendChild(document.createTextNode(' ('+r.category+'): '+r.prompt));box.appendChild(h);
      var cols=document.createElement('div');cols.className='cols';
      [['preferred response',r.preferred],['unsteered',r.unsteered],
       ['steered ('+r.method+', α='+r.alpha+', '+r.gate+')',r.generation]].forEach(function(c){
        var d=document.createElement('div');var t=document.createElement('h3');
        t.textContent=c[0];d.appendChild(t);d.appendChild(document.createTextNode(c[1]||''));
        cols.appendChild(d);});
      box.appendChild(cols);list.appendChild(box);});
    document.getElementById('gen-count').textContent=rows.length+' generation(s)';
  }
  keys.forEach(function(k){sel[k].addEventListener('change',function(){update(k);});});
  fill('user',data);update('user');
})();
"""

_TAIL_JS = """
window.addEventListener('load',function(){setTimeout(function(){
  var n=0;document.querySelectorAll('.js-plotly-plot').forEach(function(el){
    if(el.querySelector('.main-svg')){n++;}});
  document.body.setAttribute('data-rendered',String(n));
  document.body.setAttribute('data-errors',String(window.__errors.length));
  document.body.setAttribute('data-error-text',window.__errors.join(' | '));
  // layout: the page must not scroll sideways; every legend inside its figure's box
  var over=document.documentElement.scrollWidth-document.documentElement.clientWidth;
  document.body.setAttribute('data-overflow',String(Math.max(0,over)));
  var out=[];document.querySelectorAll('.js-plotly-plot').forEach(function(el){
    var box=el.getBoundingClientRect();var lg=el.querySelector('.legend');
    if(!lg){return;}var r=lg.getBoundingClientRect();
    if(r.left<box.left-1||r.right>box.right+1||r.top<box.top-1||r.bottom>box.bottom+1){
      out.push(el.id);}});
  document.body.setAttribute('data-legends-out',out.join(' ')||'none');
},300);});
"""


def _plotly_js(folder: Path) -> None:
    from plotly.offline import get_plotlyjs

    path = folder / "plotly.min.js"
    js = get_plotlyjs()
    if not path.exists() or path.stat().st_size != len(js.encode()):
        path.write_text(js, encoding="utf-8")


def _table_html(frame: pd.DataFrame) -> str:
    """A table without the frame's index (format numbers first: ``reporting.tables``)."""
    body = frame.to_html(
        classes="data",
        border=0,
        na_rep="–",
        float_format=lambda v: f"{v:.3g}",
        escape=True,
        index=False,
    )
    return f'<div class="tablewrap">{body}</div>'


def _script_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, ensure_ascii=False).replace("</", "<\\/")


def write_report(
    folder: str | Path,
    *,
    title: str,
    subtitle: str = "",
    config: Mapping[str, Any] | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    figures: Mapping[str, go.Figure] | None = None,
    generations: pd.DataFrame | None = None,
    notes: Sequence[str] = (),
    links: Mapping[str, str] | None = None,
    headline: Sequence[str] = (),
) -> Path:
    """Write ``folder/index.html`` (and ``folder/plotly.min.js``); returns the page's path.

    Args:
        tables: heading -> DataFrame (shown as HTML tables).
        figures: heading -> figure (interactive, in the order given).
        generations: one row per generation with columns ``user``, ``method``, ``alpha``,
            ``gate``, ``category``, ``prompt``, ``preferred``, ``unsteered``, ``generation``.
        notes: sentences shown at the top (e.g. "simulated data, not real PRISM").
        headline: the findings that matter, one sentence each, listed first.
        links: label -> relative path of other pages (e.g. SteerX user cards).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _plotly_js(folder)
    tables, figures = tables or {}, figures or {}
    sections: list[tuple[str, str, str]] = []  # id, heading, body
    for i, (name, frame) in enumerate(tables.items()):
        sections.append((f"table-{i}", name, _table_html(frame)))
    for i, (name, fig) in enumerate(figures.items()):
        body = pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            div_id=f"fig-{i}",
            config={"responsive": True, "displaylogo": False},
        )
        sections.append((f"figure-{i}", name, f'<div class="figure">{body}</div>'))
    scripts = ""
    if generations is not None and not generations.empty:
        need = ["user", "method", "alpha", "gate", "category", "prompt", "preferred"]
        need += ["unsteered", "generation"]
        missing = [c for c in need if c not in generations]
        if missing:
            raise ValueError(f"generations needs columns {missing}")
        rows = generations[need].astype(object).where(generations[need].notna(), None)
        records = rows.to_dict(orient="records")
        for r in records:
            r["alpha"] = f"{float(r['alpha']):g}"
        pickers = "".join(
            f'<label>{k} <select id="pick-{k}"></select></label>'
            for k in ("user", "method", "alpha", "gate")
        )
        body = (
            f'<div class="browser">{pickers}<span id="gen-count"></span>'
            '<div id="gen-list"></div></div>'
            f'<script type="application/json" id="gen-data">{_script_json(records)}</script>'
        )
        sections.append(("generations", "Generations", body))
        scripts = f"<script>{_BROWSER_JS}</script>"
    if links:
        items = "".join(
            f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>'
            for label, href in links.items()
        )
        sections.append(("links", "More pages", f"<ul>{items}</ul>"))
    if config is not None:
        cfg = html.escape(json.dumps(config, indent=1, default=str))
        sections.append(("config", "Configuration", f'<pre class="config">{cfg}</pre>'))
    nav = "".join(f'<a href="#{sid}">{html.escape(h)}</a>' for sid, h, _ in sections)
    note_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    if headline:
        items = "".join(f"<li>{html.escape(h)}</li>" for h in headline)
        note_html = (
            f'<section id="headline" class="headline"><ul>{items}</ul></section>' + note_html
        )
    content = "".join(
        f'<section id="{sid}"><h2>{html.escape(h)}</h2>{b}</section>' for sid, h, b in sections
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style><script>{_HEAD_JS}</script>
<script src="plotly.min.js"></script></head>
<body data-rendered="0" data-errors="-1">
<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>
<nav>{nav}</nav><main>{note_html}{content}</main>
{scripts}<script>{_TAIL_JS}</script></body></html>
"""
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_user_card(
    path: str | Path,
    *,
    user: str,
    description: str,
    targets: Sequence[tuple[str, Sequence[str], Sequence[float], Sequence[int]]],
    subtitle: str = "",
) -> Path:
    """A SteerX user card: the description beside the user's texts, each token shaded by its
    causal effect and the preference-driven ones outlined. ``targets``: (prompt, tokens,
    effects, selected indices) per conversation."""
    blocks = []
    for prompt, tokens, effects, selected in targets:
        keep = set(selected)
        peak = max([abs(e) for e in effects] + [1e-9])
        spans = []
        for i, (t, e) in enumerate(zip(tokens, effects, strict=True)):
            a = min(1.0, abs(e) / peak)
            colour = f"rgba(232,115,26,{a:.2f})" if e > 0 else f"rgba(76,120,168,{a:.2f})"
            border = "outline:2px solid #2a7f62;" if i in keep else ""
            spans.append(
                f'<span title="CE {e:+.3f}" style="background:{colour};{border}">'
                f"{html.escape(t)}</span>"
            )
        blocks.append(
            f"<p><b>prompt:</b> {html.escape(prompt)}</p><div class='resp'>{''.join(spans)}</div>"
        )
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>SteerX · {html.escape(user)}</title><style>{_CSS}
.card{{display:flex;gap:24px}} .card .desc{{flex:1;background:#fff;border:1px solid #ddd;padding:12px}}
.card .hist{{flex:2}} .resp{{background:#fff;border:1px solid #ddd;padding:8px;white-space:pre-wrap;
line-height:1.9}}</style></head><body>
<header><h1>SteerX user card · {html.escape(user)}</h1><p>{html.escape(subtitle)}</p></header>
<main><div class="card"><div class="desc"><h2>Description</h2><p>{html.escape(description)}</p>
<p class="note">Orange: the history raised the token's probability; blue: lowered it;
outlined: kept as preference-driven.</p></div>
<div class="hist"><h2>History, token by token</h2>{"".join(blocks)}</div></div></main></body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def append_links(page: str | Path, section: str, links: Mapping[str, str]) -> Path:
    """Add (or replace) a section of links on an existing report page, e.g. the SteerX
    figures and user cards written after ``steerlens demo`` made the page."""
    page = Path(page)
    text = page.read_text(encoding="utf-8")
    sid = "links-" + "".join(c if c.isalnum() else "-" for c in section.lower())
    items = "".join(
        f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>'
        for label, href in links.items()
    )
    block = f'<section id="{sid}"><h2>{html.escape(section)}</h2><ul>{items}</ul></section>'
    start = text.find(f'<section id="{sid}">')
    if start >= 0:
        end = text.index("</section>", start) + len("</section>")
        text = text[:start] + block + text[end:]
    else:
        text = text.replace("</main>", block + "</main>", 1)
    page.write_text(text, encoding="utf-8")
    return page
