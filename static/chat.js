// ChatBridge chat page: conversations in localStorage, answers streamed from /api/chat.
// Everything a model or a person typed is put on the page as text (see markdown.js).

import { listModels, setToken, streamChat, uploadFile } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import {
  currentChatId, historyOf, keepCurrentChatId, keepSetting, loadChats, loadSetting, newId,
  saveChats, spokenContent, titleOf,
} from "./store.js";

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"), sidebarToggle: $("sidebar-toggle"), scrim: $("scrim"),
  chatList: $("chat-list"), chatListEmpty: $("chat-list-empty"),
  newChat: $("new-chat"), newChatTop: $("new-chat-top"), tokenChange: $("token-change"),
  model: $("model"), systemToggle: $("system-toggle"), systemPanel: $("system-panel"),
  system: $("system"), conversation: $("conversation"), welcome: $("welcome"),
  composer: $("composer"), attachments: $("attachments"), file: $("file"),
  message: $("message"), send: $("send"), stop: $("stop"),
  tokenDialog: $("token-dialog"), tokenForm: $("token-form"), tokenInput: $("token-input"),
  tokenWhy: $("token-why"), tokenCancel: $("token-cancel"),
};

const INTERRUPTED = "No answer arrived: the page was closed or reloaded while it was coming in.";
const FILE_NOTE = "Files are not kept after a reload; attach it again if the answer needs it.";

let chats = loadAll();
let chat = chats.find((c) => c.id === currentChatId()) || blankChat();
let running = null; // {controller, owner, message} while an answer streams in
let sending = false; // a message is waiting for its upload to finish
let attachment = null; // {file, preview, status, settled, done, fileData, fileId, error}
// This session only: what a sent message's file looked like and carried, for its view and a retry.
const previews = new Map(); // message id -> blob: URL of its image
const sentFiles = new Map(); // message id -> file_data

// Kept conversations; an answer that was still streaming when its page closed is an error now.
function loadAll() {
  const kept = loadChats();
  for (const m of kept.flatMap((c) => c.messages)) {
    if (m.status === "streaming") Object.assign(m, { status: "error", error: INTERRUPTED });
  }
  return kept;
}

function blankChat() {
  return { id: newId(), title: "", updated: Date.now(), messages: [] };
}

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

function button(className, label, title) {
  const node = el("button", className, label);
  node.type = "button";
  if (title) node.title = title;
  return node;
}

// Save a conversation (the open one unless said otherwise) with all the others.
function persist(target = chat) {
  target.updated = Date.now();
  target.title = titleOf(target.messages);
  if (target === chat && target.messages.length && !chats.includes(target)) chats.unshift(target);
  chats.sort((a, b) => b.updated - a.updated);
  saveChats(chats);
  keepCurrentChatId(chat.id);
  renderSidebar();
}

// ------------------------------------------------------------------ sidebar

function renderSidebar() {
  ui.chatList.replaceChildren(...chats.map((c) => {
    const open = button("chat-open", c.title || titleOf(c.messages));
    open.dir = "auto";
    const remove = button("chat-delete", "×", "Delete this conversation");
    remove.setAttribute("aria-label", `Delete “${c.title}”`);
    const item = el("li", c.id === chat.id ? "chat-item current" : "chat-item", open, remove);
    item.dataset.chatId = c.id;
    if (c.id === chat.id) open.setAttribute("aria-current", "page");
    return item;
  }));
  ui.chatListEmpty.hidden = chats.length > 0;
}

function setSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  ui.scrim.hidden = !open;
  ui.sidebarToggle.setAttribute("aria-expanded", String(open));
}

function switchTo(next) {
  if (running) running.controller.abort();
  chat = next;
  keepCurrentChatId(chat.id);
  renderSidebar();
  renderConversation();
  setSidebar(false);
  ui.message.focus();
}

function deleteChat(id) {
  if (running && chat.id === id) running.controller.abort();
  chats = chats.filter((c) => c.id !== id);
  saveChats(chats);
  if (chat.id === id) switchTo(blankChat());
  else renderSidebar();
}

// ------------------------------------------------------------------ conversation

function nearBottom() {
  const box = ui.conversation;
  return box.scrollHeight - box.scrollTop - box.clientHeight < 120;
}

function scrollDown(force = false) {
  if (force || nearBottom()) ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

// Draw the open conversation. A last question without an answer gets an error with Retry,
// unless its answer is about to be asked for.
function renderConversation(answering = false) {
  const views = chat.messages.map((m) => (m.role === "user" ? userView(m) : answerView(m).node));
  const last = chat.messages[chat.messages.length - 1];
  if (last && last.role === "user" && !running && !answering) {
    views.push(answerView({ id: "", role: "assistant", content: "", status: "error", error: INTERRUPTED }).node);
  }
  ui.welcome.hidden = views.length > 0;
  ui.conversation.replaceChildren(ui.welcome, ...views);
  markRetry();
  scrollDown(true);
}

// Only the last answer of a conversation can be tried again.
function markRetry() {
  const errors = ui.conversation.querySelectorAll(".message.error");
  errors.forEach((node, n) => {
    node.querySelector(".retry").hidden = n !== errors.length - 1 || node.nextElementSibling !== null;
  });
}

function userView(message) {
  const node = el("article", "message");
  node.dataset.role = "user";
  node.dataset.id = message.id;
  node.dir = "auto";
  if (message.file) node.append(fileBadge(message.file, previews.get(message.id)));
  if (message.content) {
    const content = el("div", "content", message.content);
    content.dir = "auto";
    node.append(content);
  }
  return node;
}

function fileBadge(file, preview) {
  const badge = el("div", "file-badge");
  if (preview) {
    const image = el("img", "thumb");
    image.src = preview;
    image.alt = file.name;
    badge.append(image);
  } else {
    badge.append(el("span", "file-kind", kindOf(file.mime, file.name)));
  }
  const name = el("span", "file-name", file.name);
  name.dir = "auto";
  badge.append(name);
  return badge;
}

function kindOf(mime, name) {
  if (mime === "application/pdf") return "PDF";
  if ((mime || "").startsWith("image/")) return "IMG";
  const extension = /\.([a-z0-9]{1,4})$/i.exec(name || "");
  return extension ? extension[1].toUpperCase() : "FILE";
}

const LONG_ANSWER = 12000; // characters past which a streaming answer is redrawn less often
const LONG_ANSWER_PAUSE = 150; // ms

// An answer's element and an update() that redraws it from the message: at most once a frame,
// and for a long answer at most every LONG_ANSWER_PAUSE, since each redraw parses it all again.
function answerView(message) {
  const summary = el("summary", "", "Thinking");
  const reasoning = el("div", "reasoning");
  reasoning.dir = "auto";
  const thinking = el("details", "thinking", summary, reasoning);
  const content = el("div", "content markdown");
  content.dir = "auto";
  const node = el("article", "message", thinking, content);
  node.dataset.role = "assistant";
  node.dataset.id = message.id;
  node.dir = "auto";
  let timer = 0;
  let frame = 0;
  const draw = () => {
    timer = 0;
    frame = 0;
    const stick = nearBottom();
    thinking.hidden = !message.reasoning;
    summary.textContent = message.status === "streaming" && !message.content ? "Thinking…" : "Thinking";
    reasoning.textContent = message.reasoning || "";
    content.replaceChildren(renderMarkdown(message.content));
    node.classList.toggle("pending", message.status === "streaming" && !message.content && !message.reasoning);
    drawStatus(node, message);
    if (stick) scrollDown(true);
  };
  draw();
  return {
    node,
    update(now = false) {
      if (now) {
        clearTimeout(timer);
        cancelAnimationFrame(frame);
        draw();
      } else if (!timer && !frame) {
        const pause = message.content.length > LONG_ANSWER ? LONG_ANSWER_PAUSE : 0;
        timer = setTimeout(() => { frame = requestAnimationFrame(draw); }, pause);
      }
    },
  };
}

function drawStatus(node, message) {
  node.classList.toggle("error", message.status === "error");
  node.classList.toggle("stopped", message.status === "stopped");
  node.querySelector(".status")?.remove();
  if (message.status === "stopped") {
    node.append(el("div", "status", "Stopped"));
  } else if (message.status === "error") {
    const text = el("p", "error-text", message.error || "Something went wrong.");
    text.setAttribute("role", "alert");
    text.dir = "auto";
    const retry = button("retry", "Retry");
    node.append(el("div", "status", text, retry));
  }
}

// ------------------------------------------------------------------ sending

function setBusy(busy) {
  ui.stop.hidden = !busy;
  ui.send.hidden = busy;
  updateSendButton();
}

function updateSendButton() {
  const empty = !ui.message.value.trim() && !attachment;
  ui.send.disabled = Boolean(running) || empty;
}

async function send() {
  if (running || sending || (!ui.message.value.trim() && !attachment)) return;
  const file = attachment;
  if (file && !file.settled) {
    sending = true;
    await file.done;
    sending = false;
  }
  if (file && (file.status !== "ready" || attachment !== file)) {
    ui.message.focus();
    return; // the chip shows why the file cannot go, or it was removed meanwhile
  }
  const text = ui.message.value;
  const message = { id: newId(), role: "user", content: text };
  if (file) {
    message.file = { name: file.file.name, mime: file.fileData.mime_type, id: file.fileId };
    if (file.preview) previews.set(message.id, file.preview);
    sentFiles.set(message.id, file.fileData);
    attachment = null; // the preview now belongs to the message
    renderAttachment();
  }
  ui.message.value = "";
  resizeInput();
  chat.messages.push(message);
  persist();
  renderConversation(true);
  await answer(message);
}

function dropTrailingError() {
  const last = chat.messages[chat.messages.length - 1];
  if (last && last.role === "assistant" && last.status === "error") chat.messages.pop();
}

function requestBody(owner, question) {
  const before = owner.messages.slice(0, owner.messages.indexOf(question));
  const fileData = sentFiles.get(question.id);
  const body = { message: question.content, model: ui.model.value, history: historyOf(before) };
  if (!question.content.trim() && question.file) body.message = spokenContent(question);
  const system = ui.system.value.trim();
  if (system) body.system_content = system;
  if (fileData) body.file_data = fileData;
  else if (question.file && question.file.id) body.file_id = question.file.id;
  return body;
}

// Stream the answer to the open conversation's last question. The conversation may be closed
// (which stops the answer) before it finishes, so it is saved as `owner`, not as `chat`.
async function answer(question) {
  const owner = chat;
  const message = { id: newId(), role: "assistant", content: "", reasoning: "", status: "streaming" };
  const body = requestBody(owner, question);
  owner.messages.push(message);
  const view = answerView(message);
  ui.welcome.hidden = true;
  ui.conversation.append(view.node);
  scrollDown(true);
  const controller = new AbortController();
  running = { controller, owner, message };
  setBusy(true);
  try {
    await streamChat(body, {
      signal: controller.signal,
      askToken,
      onDelta(event) {
        if (typeof event.reasoning === "string") message.reasoning += event.reasoning;
        if (typeof event.text === "string") message.content += event.text;
        view.update();
      },
    });
    delete message.status;
  } catch (error) {
    settleFailure(message, question, error);
  } finally {
    if (!message.reasoning) delete message.reasoning;
    running = null;
    setBusy(false);
    view.update(true);
    persist(owner);
    markRetry();
    if (!matchMedia("(pointer: coarse)").matches) ui.message.focus();
  }
}

function settleFailure(message, question, error) {
  if (error && error.name === "AbortError") {
    message.status = "stopped";
    return;
  }
  message.status = "error";
  message.error = (error && error.message) || String(error);
  if (error && error.status === 404 && question.file) message.error += ` ${FILE_NOTE}`;
}

async function retry() {
  if (running) return;
  dropTrailingError();
  const question = chat.messages[chat.messages.length - 1];
  if (!question || question.role !== "user") return;
  renderConversation(true);
  await answer(question);
}

// ------------------------------------------------------------------ attachments

function attach(file) {
  clearAttachment();
  const current = {
    file, status: "uploading", settled: false,
    preview: file.type.startsWith("image/") ? URL.createObjectURL(file) : "",
  };
  current.done = uploadFile(file, { askToken }).then(({ fileData, fileId }) => {
    Object.assign(current, { status: "ready", fileData, fileId });
  }, (error) => {
    Object.assign(current, { status: "error", error: error.message || String(error) });
  }).finally(() => {
    current.settled = true;
    if (attachment === current) renderAttachment();
  });
  attachment = current;
  renderAttachment();
}

function clearAttachment() {
  if (attachment && attachment.preview) URL.revokeObjectURL(attachment.preview);
  attachment = null;
  renderAttachment();
}

function renderAttachment() {
  updateSendButton();
  ui.attachments.hidden = !attachment;
  if (!attachment) {
    ui.attachments.replaceChildren();
    return;
  }
  const { file, status, preview, error } = attachment;
  const chip = el("div", "chip");
  chip.dataset.status = status;
  if (preview) {
    const image = el("img", "thumb");
    image.src = preview;
    image.alt = "";
    chip.append(image);
  } else {
    chip.append(el("span", "file-kind", kindOf(file.type, file.name)));
  }
  const name = el("span", "chip-name", file.name);
  name.dir = "auto";
  const note = { uploading: "Uploading…", ready: sizeOf(file.size), error }[status];
  const remove = button("chip-remove", "×", "Remove the file");
  remove.setAttribute("aria-label", "Remove the file");
  chip.append(el("span", "chip-text", name, el("span", "chip-note", note)), remove);
  ui.attachments.replaceChildren(chip);
}

function sizeOf(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// ------------------------------------------------------------------ access token

let tokenAnswer = null; // the pending askToken promise, shared by requests that all got a 401

function askToken(rejected) {
  if (!tokenAnswer) {
    tokenAnswer = new Promise((resolve) => {
      ui.tokenWhy.textContent = rejected
        ? "That token was not accepted. Check it and try again."
        : "This ChatBridge needs an access token. It is kept in this browser only.";
      ui.tokenInput.value = "";
      ui.tokenDialog.returnValue = "";
      ui.tokenDialog.addEventListener("close", () => {
        tokenAnswer = null;
        const token = ui.tokenDialog.returnValue.trim();
        if (token) {
          setToken(token);
          fillModels(); // the list may have been refused for want of the token
        }
        resolve(token || null);
      }, { once: true });
      ui.tokenDialog.showModal();
      ui.tokenInput.focus();
    });
  }
  return tokenAnswer;
}

// ------------------------------------------------------------------ model and settings

async function fillModels() {
  const offered = await listModels();
  if (!offered.length) return;
  const wanted = loadSetting("model", "") || ui.model.value;
  const fallback = ui.model.dataset.default;
  const ids = [...new Set([fallback, ...offered])];
  ui.model.replaceChildren(...ids.map((id) => el("option", "", id)));
  ui.model.value = ids.includes(wanted) ? wanted : fallback;
}

function restoreSettings() {
  const model = loadSetting("model", "");
  if (model && model !== ui.model.value) {
    ui.model.append(el("option", "", model));
    ui.model.value = model;
  }
  ui.system.value = loadSetting("system", "");
  markSystem();
}

function markSystem() {
  ui.systemToggle.classList.toggle("active", Boolean(ui.system.value.trim()));
}

function toggleSystem() {
  const open = ui.systemPanel.hidden;
  ui.systemPanel.hidden = !open;
  ui.systemToggle.setAttribute("aria-expanded", String(open));
  if (open) ui.system.focus();
}

// ------------------------------------------------------------------ input

function resizeInput() {
  ui.message.style.height = "auto"; // CSSOM, which the page's style-src policy allows
  ui.message.style.height = `${ui.message.scrollHeight + 2}px`;
}

async function copyCode(copy) {
  const code = copy.closest(".code-block").querySelector("code").textContent;
  try {
    await navigator.clipboard.writeText(code);
    copy.textContent = "Copied";
  } catch {
    copy.textContent = "Press Ctrl+C";
    const range = document.createRange();
    range.selectNodeContents(copy.closest(".code-block").querySelector("code"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  }
  setTimeout(() => { copy.textContent = "Copy"; }, 1600);
}

function newChat() {
  if (!chat.messages.length && !running) {
    setSidebar(false);
    ui.message.focus();
    return;
  }
  switchTo(blankChat());
}

// ------------------------------------------------------------------ wiring

function wire() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.message.addEventListener("keydown", (event) => {
    // keyCode 229: an input method is still composing (Safari ends composition before keydown)
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    send();
  });
  ui.message.addEventListener("input", () => {
    resizeInput();
    updateSendButton();
  });
  ui.message.addEventListener("paste", (event) => {
    const file = event.clipboardData && event.clipboardData.files[0];
    if (file) {
      event.preventDefault();
      attach(file);
    }
  });
  ui.composer.addEventListener("dragover", (event) => event.preventDefault());
  ui.composer.addEventListener("drop", (event) => {
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) {
      event.preventDefault();
      attach(file);
    }
  });
  ui.file.addEventListener("change", () => {
    const file = ui.file.files[0];
    ui.file.value = "";
    if (file) attach(file);
  });
  ui.attachments.addEventListener("click", (event) => {
    if (event.target.closest(".chip-remove")) clearAttachment();
  });
  ui.stop.addEventListener("click", () => running && running.controller.abort());
  ui.conversation.addEventListener("click", (event) => {
    const copy = event.target.closest(".code-block .copy");
    if (copy) copyCode(copy);
    if (event.target.closest(".retry")) retry();
  });
  ui.newChat.addEventListener("click", newChat);
  ui.newChatTop.addEventListener("click", newChat);
  ui.chatList.addEventListener("click", (event) => {
    const item = event.target.closest(".chat-item");
    const picked = item && chats.find((c) => c.id === item.dataset.chatId);
    if (!picked) return;
    if (event.target.closest(".chat-delete")) deleteChat(picked.id);
    else if (picked !== chat) switchTo(picked);
    else setSidebar(false);
  });
  ui.sidebarToggle.addEventListener("click", () => setSidebar(!document.body.classList.contains("sidebar-open")));
  ui.scrim.addEventListener("click", () => setSidebar(false));
  ui.tokenChange.addEventListener("click", () => askToken(false));
  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (ui.tokenInput.value.trim()) ui.tokenDialog.close(ui.tokenInput.value.trim());
  });
  ui.tokenCancel.addEventListener("click", () => ui.tokenDialog.close(""));
  ui.model.addEventListener("change", () => keepSetting("model", ui.model.value));
  ui.systemToggle.addEventListener("click", toggleSystem);
  ui.system.addEventListener("input", () => {
    keepSetting("system", ui.system.value);
    markSystem();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (document.body.classList.contains("sidebar-open")) setSidebar(false);
    else if (running && !ui.tokenDialog.open) running.controller.abort();
  });
  window.addEventListener("storage", (event) => {
    if (event.key !== "chatbridge.chats" || running) return;
    chats = loadAll();
    chat = chats.find((c) => c.id === chat.id) || chat;
    renderSidebar();
    renderConversation();
  });
}

wire();
restoreSettings();
renderSidebar();
renderConversation();
setBusy(false);
fillModels();
ui.message.focus();
document.documentElement.dataset.ready = "true";
