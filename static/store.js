// Conversations and settings kept in this browser's localStorage.
//
// A conversation: {id, title, updated, messages}; a message: {id, role: "user"|"assistant",
// content, reasoning?, file?: {name, mime, id}, status?: "stopped"|"error", error?}.
// Files themselves are not kept (they would fill the storage quota): a message remembers the
// file's name and its upload id, which the service keeps for a while.

const CHATS_KEY = "chatbridge.chats";
const CURRENT_KEY = "chatbridge.current";
const OLD_HISTORY_KEY = "chatbridge.history"; // the first page kept one conversation here
const TITLE_LENGTH = 60;

function read(key, fallback) {
  try {
    const value = localStorage.getItem(key);
    return value === null ? fallback : JSON.parse(value);
  } catch {
    return fallback;
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false; // full or disabled: the conversation still works until the page closes
  }
}

export function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)),
    (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function validMessage(m) {
  return m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string"
    && typeof m.id === "string";
}

/** Every kept conversation, most recently used first. */
export function loadChats() {
  const raw = read(CHATS_KEY, []);
  const chats = (Array.isArray(raw) ? raw : [])
    .filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages))
    .map((c) => ({ ...c, messages: c.messages.filter(validMessage) }))
    .filter((c) => c.messages.length);
  const old = adoptOldHistory();
  if (old) chats.push(old);
  return chats.sort((a, b) => (b.updated || 0) - (a.updated || 0));
}

// The single conversation the first page kept, as a conversation of its own.
function adoptOldHistory() {
  const turns = read(OLD_HISTORY_KEY, null);
  if (turns === null) return null;
  try {
    localStorage.removeItem(OLD_HISTORY_KEY);
  } catch {
    return null;
  }
  const messages = (Array.isArray(turns) ? turns : [])
    .map((t) => ({ ...t, id: newId() })).filter(validMessage);
  return messages.length ? { id: newId(), title: titleOf(messages), updated: Date.now(), messages } : null;
}

export function saveChats(chats) {
  return write(CHATS_KEY, chats.filter((c) => c.messages.length));
}

export function currentChatId() {
  return read(CURRENT_KEY, null);
}

export function keepCurrentChatId(id) {
  write(CURRENT_KEY, id);
}

/** A conversation's title: the start of its first message. */
export function titleOf(messages) {
  const first = messages.find((m) => m.role === "user");
  const text = first ? (first.content.trim() || (first.file && first.file.name) || "") : "";
  const line = text.replace(/\s+/g, " ");
  return line.length > TITLE_LENGTH ? `${line.slice(0, TITLE_LENGTH - 1)}…` : line || "New chat";
}

/** What a user message says to the model: its text, and the name of a file sent with it. */
export function spokenContent(message) {
  const note = message.file ? `[file: ${message.file.name}]` : "";
  return [message.content, note].filter((part) => part.trim()).join("\n\n");
}

/**
 * The conversation as the service's `history`: each question with the answer it got. A
 * question whose answer failed is left out, so the turns still alternate.
 */
export function historyOf(messages) {
  const turns = [];
  messages.forEach((message, n) => {
    const answer = messages[n + 1];
    if (message.role !== "user" || !answer || answer.role !== "assistant") return;
    if (answer.status === "error" || !answer.content.trim()) return;
    turns.push({ role: "user", content: spokenContent(message) },
      { role: "assistant", content: answer.content });
  });
  return turns;
}

export function loadSetting(name, fallback = "") {
  const value = read(`chatbridge.${name}`, fallback);
  return typeof value === typeof fallback ? value : fallback;
}

export function keepSetting(name, value) {
  write(`chatbridge.${name}`, value);
}
