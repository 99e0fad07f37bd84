/* Message bodies: Markdown rendered by marked with raw HTML escaped (shown as text, never
 * parsed), then sanitised by DOMPurify before anything touches the DOM. marked and DOMPurify
 * are the vendored classic scripts the page loads before its modules. */

const { marked, DOMPurify } = globalThis;

const markdown = new marked.Marked({
  gfm: true,
  breaks: true,
  renderer: {
    // Raw HTML in a message is shown as text, never parsed as HTML.
    html(token) {
      return escapeHtml(token.text);
    },
  },
});

function escapeHtml(text) {
  return String(text)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

const PURIFY = {
  ALLOWED_TAGS: [
    "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead",
    "tr", "ul", "input", "span",
  ],
  ALLOWED_ATTR: ["href", "title", "align", "type", "checked", "disabled", "class"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#|\/(?!\/))/i,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
  if (node.tagName === "INPUT" && node.getAttribute("type") !== "checkbox") node.remove();
  if (node.tagName === "INPUT") node.setAttribute("disabled", "");
});

// Every path into the page goes through here: parsed, then sanitised, as a DOM fragment.
function toFragment(text) {
  try {
    return DOMPurify.sanitize(markdown.parse(text || ""), PURIFY);
  } catch {
    return document.createTextNode(text || "");
  }
}

// What renderStreaming has drawn into a body and will not parse again: the finished blocks
// (`source`, a prefix of the text) and how many of the body's child nodes they are.
const frozen = new WeakMap();

/** The whole text, parsed at once: for a message that is not streaming, and a reply's final
 * draw (so what it ends as is exactly what a reload shows). */
export function renderMarkdown(target, text) {
  frozen.delete(target);
  target.replaceChildren(toFragment(text));
}

/** A streaming reply, drawn again as it grows. Parsing the whole text on every draw costs
 * O(length) a draw and O(length²) for the reply, so the blocks that are finished are parsed
 * once and kept, and only the last, still growing block is parsed again. Each piece goes
 * through the same parse and sanitiser as renderMarkdown. */
export function renderStreaming(target, text) {
  text = text || "";
  let done = frozen.get(target);
  if (!done || !text.startsWith(done.source)) {
    // A body drawn some other way, or text rewritten from an earlier offset: start over.
    done = { source: "", nodes: 0 };
    target.replaceChildren();
    frozen.set(target, done);
  }
  while (target.childNodes.length > done.nodes) target.lastChild.remove();
  const end = finishedEnd(text, done.source.length);
  if (end > done.source.length) {
    target.append(toFragment(text.slice(done.source.length, end)));
    done.source = text.slice(0, end);
    done.nodes = target.childNodes.length;
  }
  target.append(toFragment(text.slice(end)));
}

const FENCE = /^ {0,3}(`{3,}|~{3,})/;
const HTML_LINE = /^ {0,3}</;
// A line after a blank line that starts a block of its own: not a list item or an indented
// line (either may continue the list above), not HTML (an HTML block may span blank lines).
const FRESH_BLOCK = /^(?![-*+](?:\s|$)|\d{1,9}[.)](?:\s|$))[^\s<]/;

/** Where the finished blocks of `text` end, scanning from `from` (a previous answer, so
 * outside any code fence): the start of the last complete line that begins a fresh block
 * after a blank line, outside a fence. Parsing text up to there on its own gives the same
 * HTML as parsing the whole (link reference definitions further down aside, which the final
 * draw picks up). */
function finishedEnd(text, from) {
  let end = from;
  let fence = null;
  let afterBlank = false;
  for (let start = from, stop; (stop = text.indexOf("\n", start)) !== -1; start = stop + 1) {
    const line = text.slice(start, stop);
    if (fence) {
      const close = FENCE.exec(line);
      if (close && close[1][0] === fence[0] && close[1].length >= fence.length && !line.slice(close[0].length).trim()) {
        fence = null;
      }
      afterBlank = false;
      continue;
    }
    if (HTML_LINE.test(line)) break;
    if (afterBlank && FRESH_BLOCK.test(line)) end = start;
    const open = FENCE.exec(line);
    if (open) fence = open[1];
    afterBlank = !line.trim();
  }
  return end;
}
