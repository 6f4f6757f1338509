// A safe Markdown subset for model answers, rendered straight into DOM nodes.
//
// Model text reaches the page only as text nodes (createTextNode/textContent): no HTML parser
// ever sees it, so markup in an answer shows as the characters it is and never runs. Links
// are the one attribute taken from the text, and only http:, https: and mailto: URLs become
// hrefs. The parser is forgiving of half-finished input because it re-renders while an
// answer streams in: an unclosed ``` fence is a code block so far, an unclosed ** is text.
//
// Blocks: paragraphs (single newlines kept as line breaks), ATX headings, fenced code blocks
// (with a copy button), bullet and numbered lists (nested, loose or tight), block quotes,
// tables and rules. Inline: code spans, links, bare URLs, bold, italic, strikethrough and
// backslash escapes.

const MAX_DEPTH = 8; // lists and quotes nest at most this deep; deeper text stays text
const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
const TABLE_RULE = /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/;
const BLANK = /^\s*$/;

/** The Markdown source as a DocumentFragment of safe elements. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  fragment.append(...blocks(lines, 0));
  return fragment;
}

// Each block reads in the direction of its own text, so a Persian paragraph reads right to
// left next to an English one. Paragraphs and headings use dir="auto". Lists, quotes and tables
// are given the direction of their first letter, since dir="auto" on them would skip every
// child that has a dir of its own, and their bullets and borders must sit on the right side.
const OWN_DIRECTION = new Set(["P", "H1", "H2", "H3", "H4", "H5", "H6", "TH", "TD"]);
const CONTAINERS = new Set(["UL", "OL", "BLOCKQUOTE", "TABLE"]);
const FIRST_LETTER = /\p{L}/u;
const RIGHT_TO_LEFT = /[\p{Script=Arabic}\p{Script=Hebrew}\p{Script=Syriac}\p{Script=Thaana}\p{Script=Nko}]/u;

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (OWN_DIRECTION.has(node.tagName)) node.dir = "auto";
  node.append(...children);
  if (CONTAINERS.has(node.tagName)) node.dir = directionOf(node.textContent);
  return node;
}

function directionOf(text) {
  const letter = FIRST_LETTER.exec(text);
  if (!letter) return "auto";
  return RIGHT_TO_LEFT.test(letter[0]) ? "rtl" : "ltr";
}

// ------------------------------------------------------------------ blocks

function blocks(lines, depth) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    if (BLANK.test(lines[i])) {
      i += 1;
      continue;
    }
    const [node, next] = block(lines, i, depth);
    out.push(node);
    i = next;
  }
  return out;
}

// One block starting at lines[i]: [node, index of the line after it].
function block(lines, i, depth) {
  const line = lines[i];
  let m;
  if ((m = FENCE.exec(line))) return codeBlock(lines, i, m);
  if ((m = HEADING.exec(line))) return [el(`h${m[1].length}`, "", ...inline(m[2] || "")), i + 1];
  if (RULE.test(line)) return [el("hr"), i + 1];
  if (depth < MAX_DEPTH && QUOTE.test(line)) return quote(lines, i, depth);
  if (depth < MAX_DEPTH && ITEM.test(line) && !BLANK.test(ITEM.exec(line)[3] || "x")) {
    return list(lines, i, depth);
  }
  if (isTableStart(lines, i)) return table(lines, i);
  return paragraph(lines, i);
}

// True when lines[i] would end a paragraph by starting another block.
function startsBlock(lines, i) {
  const line = lines[i];
  if (FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line)) return true;
  const item = ITEM.exec(line);
  return Boolean(item && item[3] && !BLANK.test(item[3])) || isTableStart(lines, i);
}

function paragraph(lines, i) {
  const text = [lines[i].trim()];
  let j = i + 1;
  while (j < lines.length && !BLANK.test(lines[j]) && !startsBlock(lines, j)) {
    text.push(lines[j].trim());
    j += 1;
  }
  return [el("p", "", ...inline(text.join("\n"))), j];
}

function codeBlock(lines, i, open) {
  const fence = open[1];
  const indent = lines[i].length - lines[i].trimStart().length;
  const body = [];
  let j = i + 1;
  const closing = new RegExp(`^ {0,3}${fence[0] === "`" ? "`" : "~"}{${fence.length},}\\s*$`);
  while (j < lines.length && !closing.test(lines[j])) {
    body.push(lines[j].slice(Math.min(indent, lines[j].length - lines[j].trimStart().length)));
    j += 1;
  }
  return [codeBox(body.join("\n"), open[2]), Math.min(j + 1, lines.length)];
}

// A code block with its language and a copy button (wired by the page, by class name).
function codeBox(text, language) {
  const code = el("code", "", document.createTextNode(text));
  const lang = /^[\w+#.-]{1,32}$/.test(language || "") ? language : "";
  if (lang) code.className = `language-${lang}`;
  const copy = el("button", "copy", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", "Copy code");
  const head = el("div", "code-head", el("span", "code-lang", lang || "code"), copy);
  const box = el("div", "code-block", head, el("pre", "", code));
  box.dir = "ltr"; // code reads left to right even inside a right-to-left answer
  return box;
}

function quote(lines, i, depth) {
  const inner = [];
  let j = i;
  let m;
  while (j < lines.length && (m = QUOTE.exec(lines[j]))) {
    inner.push(m[1]);
    j += 1;
  }
  return [el("blockquote", "", ...blocks(inner, depth + 1)), j];
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

// A list and its items. Lines indented past the marker belong to the item (nested lists, code
// blocks, more paragraphs); an unindented line right after an item continues its paragraph.
function list(lines, i, depth) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const base = first[1].length;
  const node = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) node.start = parseInt(first[2], 10);
  let loose = false;
  let j = i;
  const items = [];
  while (j < lines.length) {
    const m = ITEM.exec(lines[j]);
    if (!m || m[1].length > base + 1 || m[1].length < base || /\d/.test(m[2]) !== ordered) break;
    const column = m[1].length + m[2].length + 1;
    const body = [m[3] || ""];
    j += 1;
    while (j < lines.length) {
      const line = lines[j];
      if (BLANK.test(line)) {
        let k = j;
        while (k < lines.length && BLANK.test(lines[k])) k += 1;
        if (k < lines.length && indentOf(lines[k]) > base) {
          body.push(...lines.slice(j, k).map(() => ""));
          j = k;
          continue;
        }
        const again = k < lines.length && ITEM.exec(lines[k]);
        if (again && again[1].length === base && /\d/.test(again[2]) === ordered) {
          loose = true;
          j = k;
        }
        break;
      }
      if (indentOf(line) > base) {
        body.push(line.slice(Math.min(indentOf(line), column)));
      } else if (!ITEM.test(line) && !startsBlock(lines, j) && !BLANK.test(body[body.length - 1])) {
        body.push(line.trim());
      } else {
        break;
      }
      j += 1;
    }
    items.push(body);
  }
  for (const body of items) node.append(listItem(body, depth, loose));
  node.dir = directionOf(node.textContent);
  return [node, j];
}

function listItem(body, depth, loose) {
  const children = blocks(body, depth + 1);
  const item = el("li");
  for (const child of children) {
    if (!loose && child.tagName === "P") item.append(...child.childNodes);
    else item.append(child);
  }
  return item;
}

function isTableStart(lines, i) {
  return i + 1 < lines.length && lines[i].includes("|") && TABLE_RULE.test(lines[i + 1])
    && lines[i + 1].includes("-") && cells(lines[i]).length === cells(lines[i + 1]).length;
}

// A row's cells: split on unescaped pipes, outer pipes optional.
function cells(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function table(lines, i) {
  const head = cells(lines[i]);
  const align = cells(lines[i + 1]).map((rule) => {
    if (rule.startsWith(":") && rule.endsWith(":")) return "center";
    if (rule.endsWith(":")) return "right";
    return rule.startsWith(":") ? "left" : "";
  });
  const row = (values, tag) => el("tr", "", ...head.map((_, n) =>
    el(tag, align[n] ? `align-${align[n]}` : "", ...inline(values[n] || ""))));
  const body = el("tbody");
  let j = i + 2;
  while (j < lines.length && lines[j].includes("|") && !BLANK.test(lines[j])) {
    body.append(row(cells(lines[j]), "td"));
    j += 1;
  }
  const grid = el("table", "", el("thead", "", row(head, "th")), body);
  const wrap = el("div", "table-wrap", grid);
  wrap.dir = grid.dir; // so a right-to-left table starts at the right edge
  return [wrap, j];
}

// ------------------------------------------------------------------ inline

// Tried in order where the text has one of their opening characters; `y` anchors each at the
// scan position. Emphasis with _ must not start or end inside a word (snake_case stays as is).
// A link's label is bounded so a long run of unclosed "[" stays linear to scan.
const RULES = [
  ["escape", /\\([!-/:-@[-`{-~])/y],
  ["angle", /<((?:https?:\/\/|mailto:)[^\s<>]+)>/y],
  ["code", /(`+)(?!`)([\s\S]*?[^`])\1(?!`)/y],
  ["link", /\[((?:\\.|[^\\\]\n]){1,1000})\]\(\s*<?([^\s<>()]+(?:\([^\s<>()]*\)[^\s<>()]*)*)>?(?:\s+"[^"\n]*")?\s*\)/y],
  ["url", /(?:https?:\/\/|mailto:)[^\s<>"'`]+/y],
  ["strong", /(\*\*|__)(?=\S)((?:\\.|[^\\\n])*?\S)\1/y],
  ["em", /(\*|_)(?=[^\s*_])((?:\\.|\*\*(?:\\.|[^\\\n])+?\*\*|[^\\\n])*?[^\s\\])\1(?!\1)/y],
  ["del", /~~(?=\S)((?:\\.|[^\\\n])*?\S)~~/y],
];
const OPENERS = /[\\`[<hm*_~]/g;

function inline(text, inLink = false) {
  const out = [];
  let plain = "";
  let i = 0;
  const flush = () => {
    if (plain) out.push(...lineBreaks(plain));
    plain = "";
  };
  while (i < text.length) {
    OPENERS.lastIndex = i;
    const found = OPENERS.exec(text);
    if (!found) break;
    plain += text.slice(i, found.index);
    i = found.index;
    const match = matchRule(text, i, inLink);
    if (!match) {
      plain += text[i];
      i += 1;
      continue;
    }
    if (match.node === null) {
      plain += match.text;
    } else {
      flush();
      out.push(match.node);
    }
    i += match.length;
  }
  plain += text.slice(i);
  flush();
  return out;
}

function matchRule(text, i, inLink) {
  for (const [name, re] of RULES) {
    if ((name === "link" || name === "url" || name === "angle") && inLink) continue;
    re.lastIndex = i;
    const m = re.exec(text);
    if (m && fitsWord(name, m, text, i)) return inlineNode(name, m);
  }
  return null;
}

// _emphasis_ and bare URLs need a non-word character (or the edge) around them.
function fitsWord(name, m, text, i) {
  const before = i > 0 ? text[i - 1] : " ";
  if (name === "url") return !/[\w/]/.test(before);
  if ((name === "em" || name === "strong") && m[1][0] === "_") {
    const after = text[i + m[0].length] || " ";
    return !/\w/.test(before) && !/\w/.test(after);
  }
  return true;
}

// {node, length} for a matched rule; a null node keeps `text` as plain text.
function inlineNode(name, m) {
  const whole = (node) => ({ node, length: m[0].length });
  switch (name) {
    case "escape":
      return { node: null, text: m[1], length: m[0].length };
    case "code":
      return whole(el("code", "", document.createTextNode(m[2].replace(/^ (.*[^ ].*) $/s, "$1"))));
    case "link":
      return whole(link(m[2], inline(m[1], true)));
    case "url":
      return bareUrl(m[0]);
    case "angle":
      return whole(link(m[1], [document.createTextNode(m[1])]));
    case "strong":
      return whole(el("strong", "", ...inline(m[2])));
    case "em":
      return whole(el("em", "", ...inline(m[2])));
    default:
      return whole(el("del", "", ...inline(m[1])));
  }
}

function safeHref(raw) {
  try {
    const url = new URL(raw.replace(/\\(.)/g, "$1"));
    return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

// A link that opens in a new tab; an unsafe or relative URL leaves only its label.
function link(raw, label) {
  const href = safeHref(raw);
  if (!href) return el("span", "", ...label);
  const anchor = el("a", "", ...label);
  anchor.href = href;
  anchor.target = "_blank";
  anchor.rel = "noopener noreferrer";
  return anchor;
}

// A bare URL without the punctuation that ends the sentence around it, nor a ")" it did not open.
function bareUrl(raw) {
  let url = raw;
  for (;;) {
    const trimmed = url.replace(/[.,:;!?*_~]+$/, "");
    const unbalanced = trimmed.endsWith(")")
      && (trimmed.match(/\)/g) || []).length > (trimmed.match(/\(/g) || []).length;
    url = unbalanced ? trimmed.slice(0, -1) : trimmed;
    if (!unbalanced) break;
  }
  if (!/^(?:https?:\/\/|mailto:)./.test(url)) return null;
  return { node: link(url, [document.createTextNode(url)]), length: url.length };
}

function lineBreaks(text) {
  const out = [];
  text.split("\n").forEach((part, n) => {
    if (n) out.push(el("br"));
    if (part) out.push(document.createTextNode(part));
  });
  return out;
}
