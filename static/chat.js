// ChatBridge chat page: streams /api/chat (Server-Sent Events over fetch) into the page.
// Model output is only ever written with textContent, never parsed as HTML.
"use strict";

(() => {
  const HISTORY_KEY = "chatbridge.history";
  const $ = (id) => document.getElementById(id);

  const form = $("chat-form");
  const conversation = $("conversation");
  const messageInput = $("message");
  const modelInput = $("model");
  const systemInput = $("system");
  const fileInput = $("file");
  const sendButton = $("send");
  const stopButton = $("stop");
  const newChatButton = $("new-chat");

  let history = loadHistory(); // completed turns: [{role, content}, ...]
  let controller = null; // AbortController of the request in flight, if any

  // ------------------------------------------------------------ history

  function loadHistory() {
    try {
      const turns = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
      return Array.isArray(turns)
        ? turns.filter((t) => t && (t.role === "user" || t.role === "assistant")
            && typeof t.content === "string")
        : [];
    } catch {
      return [];
    }
  }

  function saveHistory() {
    try {
      localStorage.setItem(HISTORY_KEY, JSON.stringify(history));
    } catch {
      // storage full or disabled: the conversation still works in memory
    }
  }

  // ------------------------------------------------------------ rendering

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    node.dir = "auto";
    return node;
  }

  function nearBottom() {
    const root = document.scrollingElement || document.documentElement;
    return root.scrollHeight - root.scrollTop - root.clientHeight < 80;
  }

  function keepScrolled(wasNearBottom) {
    if (wasNearBottom) window.scrollTo(0, document.body.scrollHeight);
  }

  function addBubble(role, text, attachmentName) {
    const stick = nearBottom();
    const bubble = element("div", "message " + role);
    bubble.dataset.role = role;
    if (attachmentName) bubble.append(element("div", "attachment", "📎 " + attachmentName));
    const content = element("div", "content", text || "");
    bubble.append(content);
    conversation.append(bubble);
    keepScrolled(stick);
    return bubble;
  }

  // An assistant bubble that fills while the answer streams in.
  function assistantBubble() {
    const bubble = addBubble("assistant", "");
    bubble.classList.add("pending");
    const thinking = element("details", "thinking");
    thinking.hidden = true;
    thinking.append(element("summary", "", "Thinking"));
    const reasoning = element("div", "reasoning");
    thinking.append(reasoning);
    bubble.prepend(thinking);
    const content = bubble.querySelector(".content");
    let answer = "";
    let thought = "";
    return {
      bubble,
      get answer() { return answer; },
      text(delta) {
        const stick = nearBottom();
        answer += delta;
        content.textContent = answer;
        bubble.classList.remove("pending");
        keepScrolled(stick);
      },
      reasoning(delta) {
        const stick = nearBottom();
        thought += delta;
        reasoning.textContent = thought;
        thinking.hidden = false;
        bubble.classList.remove("pending");
        keepScrolled(stick);
      },
      note(kind, message) {
        bubble.classList.remove("pending");
        bubble.classList.add(kind);
        bubble.append(element("div", "note", message));
        keepScrolled(nearBottom());
      },
    };
  }

  function render() {
    conversation.replaceChildren();
    for (const turn of history) addBubble(turn.role, turn.content);
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
  }

  // ------------------------------------------------------------ network

  async function errorFrom(response, what) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch {
      // not JSON: fall through to the status line
    }
    return `${what} failed: HTTP ${response.status} ${response.statusText}`.trim();
  }

  async function upload(file, signal) {
    const data = new FormData();
    data.append("file", file);
    const response = await fetch("/api/upload", { method: "POST", body: data, signal });
    if (!response.ok) throw new Error(await errorFrom(response, "upload"));
    const body = await response.json();
    if (!body.success || !body.file_data) throw new Error(body.error || "upload failed");
    return body.file_data;
  }

  // Parse one SSE event block; returns its JSON data, or null for comments/pings.
  function parseEvent(block) {
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue; // comment / ping
      if (line.startsWith("data:")) data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
    }
    if (!data.length) return null;
    try {
      const event = JSON.parse(data.join("\n"));
      return event && typeof event === "object" ? event : null;
    } catch {
      return null;
    }
  }

  // Read the event stream, calling onEvent for each event; resolves with the
  // terminal event ({done} or {error}), or null if the stream ended without one.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      buffer = buffer.replace(/\r\n/g, "\n");
      const blocks = buffer.split("\n\n");
      buffer = done ? "" : blocks.pop();
      for (const block of blocks) {
        const event = parseEvent(block);
        if (!event) continue;
        if (event.done || "error" in event) {
          reader.cancel().catch(() => {});
          return event;
        }
        onEvent(event);
      }
      if (done) return null;
    }
  }

  // ------------------------------------------------------------ sending

  async function send() {
    const text = messageInput.value;
    const file = fileInput.files[0] || null;
    if (controller || (!text.trim() && !file)) return;

    controller = new AbortController();
    const { signal } = controller;
    setBusy(true);
    addBubble("user", text, file && file.name);
    messageInput.value = "";
    fileInput.value = "";
    const reply = assistantBubble();
    let started = false;

    try {
      const body = {
        message: text,
        model: modelInput.value.trim() || modelInput.placeholder,
        history,
      };
      const system = systemInput.value.trim();
      if (system) body.system_content = system;
      if (file) body.file_data = await upload(file, signal);

      const response = await fetch("/api/chat", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal,
      });
      if (!response.ok) throw new Error(await errorFrom(response, "chat"));
      started = true;

      const end = await readEvents(response, (event) => {
        if (typeof event.reasoning === "string") reply.reasoning(event.reasoning);
        if (typeof event.text === "string") reply.text(event.text);
      });
      if (end && end.done) {
        reply.bubble.classList.remove("pending");
        history.push({ role: "user", content: text.trim() ? text : `[file: ${file.name}]` },
          { role: "assistant", content: reply.answer });
        saveHistory();
      } else {
        reply.note("error", end ? String(end.error) : "the connection closed before the answer finished");
      }
    } catch (error) {
      if (error.name === "AbortError") {
        reply.note("stopped", "Stopped");
      } else {
        reply.note("error", error.message || String(error));
      }
      // Nothing reached the model: give the text back so it can be sent again.
      if (!started && !messageInput.value) messageInput.value = text;
    } finally {
      controller = null;
      setBusy(false);
      messageInput.focus();
    }
  }

  // ------------------------------------------------------------ wiring

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });

  messageInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", () => {
    if (controller) controller.abort();
  });

  newChatButton.addEventListener("click", () => {
    if (controller) controller.abort();
    history = [];
    try {
      localStorage.removeItem(HISTORY_KEY);
    } catch {
      // storage disabled: nothing was kept
    }
    conversation.replaceChildren();
    messageInput.focus();
  });

  render();
  setBusy(false);
  messageInput.focus();
})();
