// Test harness: talk to ChatBridge's /api/chat exactly the way a Vercel AI SDK 5 `useChat` frontend does,
// using the SDK's own client code, so the Python tests can prove the service's UI message stream is accepted.
//
// Usage:  node tests/node/read_ui_stream.mjs <ai|ai-strict> <url of /api/chat>  < request.json
//   stdin:  {"id": "chat-id", "messages": [UIMessage...], "trigger": "submit-message", "messageId"?: "...",
//            "body"?: {extra fields useChat merges into the request body, e.g. "model"}}
//   stdout: ONE JSON line {"ok", "chunks", "message", "error"}:
//     chunks  - every chunk DefaultChatTransport's stream yielded (already validated by the SDK's schemas)
//     message - the last UIMessage readUIMessageStream produced (null if none)
//     error   - message of the first error: sendMessages throwing (non-2xx: the response body text),
//               chunk validation failing, or an `error` chunk's errorText; null when none
//     ok      - true only when error is null
//   Exit 0 whenever that JSON was printed (even ok=false); 2 = bad arguments/stdin, 3 = package missing.
//
// Packages (see package.json): "ai" = ai@5.0.277 (loose chunk schemas); "ai-strict" = ai@5.0.60, whose chunk
// schemas are z.strictObject, so any unknown field (e.g. `finishReason` on `finish`) is a validation error.
// Both export the same API used here: DefaultChatTransport#sendMessages({chatId, messages, trigger, messageId,
// abortSignal, ...}) -> Promise<ReadableStream<UIMessageChunk>>, and
// readUIMessageStream({stream, onError, terminateOnError, message?}) -> AsyncIterable<UIMessage>.

const TIMEOUT_MS = 20_000;
const [pkg, url] = process.argv.slice(2);
if (!['ai', 'ai-strict'].includes(pkg) || !url) {
  console.error('usage: node read_ui_stream.mjs <ai|ai-strict> <url of /api/chat>  < request.json');
  process.exit(2);
}

let request;
try {
  let text = '';
  for await (const piece of process.stdin) text += piece;
  request = JSON.parse(text);
} catch (e) {
  console.error(`bad request JSON on stdin: ${e.message}`);
  process.exit(2);
}

let sdk;
try {
  sdk = await import(pkg); // resolved from tests/node/node_modules (next to this file)
} catch (e) {
  console.error(`cannot import ${pkg} (run npm ci in tests/node): ${e.message}`);
  process.exit(3);
}
const { DefaultChatTransport, readUIMessageStream } = sdk;

const result = { ok: false, chunks: [], message: null, error: null };
let printed = false;
const fail = (e) => { if (result.error === null) result.error = e instanceof Error ? e.message : String(e); };
const print = () => {
  if (printed) return;
  printed = true;
  result.ok = result.error === null;
  process.stdout.write(JSON.stringify(result) + '\n');
};

const timer = setTimeout(() => {
  result.error = 'harness timeout';
  print();
  process.exit(0);
}, TIMEOUT_MS);

try {
  // Exactly what useChat's Chat.makeRequest calls; `body` is useChat's extra body (e.g. {model}).
  const stream = await new DefaultChatTransport({ api: url }).sendMessages({
    chatId: request.id,
    messages: request.messages,
    trigger: request.trigger ?? 'submit-message',
    messageId: request.messageId,
    body: request.body,
    abortSignal: undefined,
  });
  const [forChunks, forMessages] = stream.tee();

  const collectChunks = (async () => {
    try {
      for await (const chunk of forChunks) result.chunks.push(chunk);
    } catch (e) {
      fail(e); // schema validation errors surface here (and in onError below)
    }
  })();

  // terminateOnError mirrors useChat, which stops updating the message at the first error.
  const readMessages = (async () => {
    try {
      for await (const message of readUIMessageStream({ stream: forMessages, onError: fail, terminateOnError: true })) {
        result.message = message;
      }
    } catch (e) {
      fail(e);
    }
  })();

  await Promise.all([collectChunks, readMessages]);
} catch (e) {
  fail(e); // sendMessages: network error or non-2xx (message = response body text)
}

clearTimeout(timer);
print();
