// A small, dependency-free Markdown renderer for model answers.
//
// Safety model: the whole source is HTML-escaped FIRST, and every transformation below works on
// escaped text, so nothing the model writes can become a tag or an attribute. The only tags in the
// output are the ones produced here; link targets are limited to http(s) and mailto.
//
// Supported: fenced code blocks (``` / ~~~, unclosed fences render as code, which is what a
// streaming answer looks like mid-way), inline code, headings, bold, italic, strikethrough,
// links, bullet and numbered lists (one nesting level by indentation), block quotes, horizontal
// rules, simple pipe tables, paragraphs and line breaks.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// Placeholders for spans that later passes must not touch (inline code, links). The marker
// characters cannot occur in escaped model text because they are stripped from the input.
const MARK = "\u0000";
const MARK_RE = /\u0000(\d+)\u0000/g;

function safeUrl(escapedUrl) {
  // `escapedUrl` is already HTML-escaped; undo only &amp; to inspect the scheme.
  const raw = escapedUrl.replace(/&amp;/g, "&").trim();
  if (/^(https?:\/\/|mailto:)/i.test(raw)) return escapedUrl.trim();
  if (/^[#/]/.test(raw) && !raw.startsWith("//")) return escapedUrl.trim(); // same-site path
  return null;
}

function inline(text) {
  const held = [];
  const hold = (html) => `${MARK}${held.push(html) - 1}${MARK}`;

  let out = text
    // inline code: `code` or ``code with ` inside``
    .replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, __, code) => hold(`<code>${code.trim()}</code>`))
    // links: [text](url "title") — the title is dropped
    .replace(/\[([^\]\n]+)\]\(([^)\s]+)(?:\s+&quot;[^)]*&quot;)?\)/g, (whole, label, url) => {
      const href = safeUrl(url);
      if (!href) return whole;
      return hold(`<a href="${href}" target="_blank" rel="noopener noreferrer">${label}</a>`);
    })
    // bare URLs
    .replace(/(^|[\s(])(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/g,
      (_, pre, url) => pre + hold(`<a href="${url}" target="_blank" rel="noopener noreferrer">${url}</a>`));

  out = out
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/__(?=\S)([\s\S]*?\S)__(?!\w)/g, "<strong>$1</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^_\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?![_\w])/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");

  // restore held spans (they may nest: a link label can hold inline code)
  while (MARK_RE.test(out)) out = out.replace(MARK_RE, (_, i) => held[Number(i)]);
  return out;
}

const RE = {
  fence: /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/,
  heading: /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/,
  hr: /^ {0,3}([-*_])(\s*\1){2,}\s*$/,
  quote: /^ {0,3}&gt;\s?(.*)$/,
  bullet: /^(\s*)([-*+])\s+(.*)$/,
  ordered: /^(\s*)(\d{1,9})[.)]\s+(.*)$/,
  tableSep: /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/,
};

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|")) s = s.slice(0, -1);
  return s.split("|").map((cell) => cell.trim());
}

function renderList(lines) {
  // lines: [{indent, ordered, start, text}] -> nested <ul>/<ol> (nesting by indentation)
  let html = "";
  const stack = []; // {indent, tag}
  for (const item of lines) {
    const tag = item.ordered ? "ol" : "ul";
    while (stack.length && item.indent < stack[stack.length - 1].indent) {
      html += `</li></${stack.pop().tag}>`;
    }
    const top = stack[stack.length - 1];
    if (!top || item.indent > top.indent) {
      const start = item.ordered && item.start !== 1 ? ` start="${item.start}"` : "";
      html += `<${tag}${start}>`;
      stack.push({ indent: item.indent, tag });
    } else {
      html += "</li>";
    }
    html += `<li>${inline(item.text)}`;
  }
  while (stack.length) html += `</li></${stack.pop().tag}>`;
  return html;
}

/** Markdown source -> safe HTML string. */
export function renderMarkdown(source) {
  const text = escapeHtml(String(source ?? "").replace(/\u0000/g, "").replace(/\r\n?/g, "\n"));
  const lines = text.split("\n");
  const out = [];
  let para = [];

  const flushPara = () => {
    if (para.length) out.push(`<p>${inline(para.join("\n")).replace(/\n/g, "<br>")}</p>`);
    para = [];
  };

  for (let i = 0; i < lines.length; ) {
    const line = lines[i];

    const fence = line.match(RE.fence);
    if (fence) {
      flushPara();
      const marker = fence[1];
      const lang = fence[2];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(marker)) body.push(lines[i++]);
      i += 1; // the closing fence (or past the end: an unclosed fence while streaming)
      const cls = lang ? ` class="language-${lang}"` : "";
      const label = lang ? `<span class="code-lang">${lang}</span>` : "";
      out.push(`<pre>${label}<code${cls}>${body.join("\n")}</code></pre>`);
      continue;
    }

    if (!line.trim()) {
      flushPara();
      i += 1;
      continue;
    }

    const heading = line.match(RE.heading);
    if (heading) {
      flushPara();
      const level = heading[1].length;
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      i += 1;
      continue;
    }

    if (RE.hr.test(line)) {
      flushPara();
      out.push("<hr>");
      i += 1;
      continue;
    }

    if (RE.quote.test(line)) {
      flushPara();
      const body = [];
      while (i < lines.length && RE.quote.test(lines[i])) body.push(lines[i++].match(RE.quote)[1]);
      // quoted text is already escaped: render it as markdown without escaping it again
      out.push(`<blockquote>${renderEscaped(body.join("\n"))}</blockquote>`);
      continue;
    }

    if (RE.bullet.test(line) || RE.ordered.test(line)) {
      flushPara();
      const items = [];
      while (i < lines.length) {
        const l = lines[i];
        const m = l.match(RE.bullet) || l.match(RE.ordered);
        if (m) {
          const ordered = !RE.bullet.test(l);
          items.push({ indent: m[1].length, ordered, start: ordered ? Number(m[2]) : 1, text: m[3] });
          i += 1;
        } else if (l.trim() && /^\s{2,}/.test(l) && items.length) {
          items[items.length - 1].text += `\n${l.trim()}`; // continuation line
          i += 1;
        } else {
          break;
        }
      }
      out.push(renderList(items));
      continue;
    }

    if (line.includes("|") && i + 1 < lines.length && RE.tableSep.test(lines[i + 1])) {
      flushPara();
      const head = splitRow(line);
      const aligns = splitRow(lines[i + 1]).map((c) =>
        c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : "");
      const cell = (tag, c, k) =>
        `<${tag}${aligns[k] ? ` style="text-align:${aligns[k]}"` : ""}>${inline(c)}</${tag}>`;
      let html = `<table><thead><tr>${head.map((c, k) => cell("th", c, k)).join("")}</tr></thead><tbody>`;
      i += 2;
      while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
        html += `<tr>${splitRow(lines[i]).map((c, k) => cell("td", c, k)).join("")}</tr>`;
        i += 1;
      }
      out.push(`${html}</tbody></table>`);
      continue;
    }

    para.push(line);
    i += 1;
  }
  flushPara();
  return out.join("\n");
}

// Renders text that is already escaped (block quote bodies): decode our own escapes, re-render.
function renderEscaped(escaped) {
  const decoded = escaped
    .replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'").replace(/&amp;/g, "&");
  return renderMarkdown(decoded);
}
