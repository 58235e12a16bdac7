// MCP over streamable HTTP end to end, with the official TypeScript SDK's
// streamable-HTTP client: run_python, progress notifications, a call
// cancelled (its sandbox freed: the principal's one call in flight can be
// made again), an artifact read.
//
// Usage: node http_client_ts.mjs URL TOKEN NODE_MODULES
// The server (serve --http, MCP_BRIDGE_MAX_CALLS_PER_CLIENT=1) is started by
// tests/suites/http.rs; prints one line per passed check, exits non-zero on
// the first failure.

import { pathToFileURL } from "node:url";

const [url, token, modules] = process.argv.slice(2);
const sdk = (path) => import(pathToFileURL(`${modules}/@modelcontextprotocol/sdk/dist/esm/${path}`).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");

function check(condition, what, detail) {
  if (!condition) {
    console.error(`FAILED ${what}: ${JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok  ${what}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "ts-sdk-e2e", version: "1.0.0" });
await client.connect(transport);
const run = async (code, options) =>
  (await client.callTool({ name: "run_python", arguments: { code } }, undefined, options)).structuredContent;

const report = await run("print(6*7)");
check(report.stdout === "42\n", "run_python over HTTP", report);

const heard = [];
const long = await run("import time\nprint('working', flush=True)\ntime.sleep(4)\nprint('done')", {
  onprogress: (progress) => heard.push(progress),
  resetTimeoutOnProgress: true,
});
check(long.stdout === "working\ndone\n", "a long run ends", long);
check(heard.length > 0 && heard[0].message === "working", "progress arrives on the request's stream", heard);

const abort = new AbortController();
const cancelled = run("import time\ntime.sleep(60)\nprint('never')", { signal: abort.signal }).then(
  (value) => ({ value }),
  (error) => ({ error: String(error) }),
);
await sleep(1500);
abort.abort("the user gave up");
const outcome = await cancelled;
check(outcome.error !== undefined, "the cancelled call is rejected on the client", outcome);
// With one call in flight allowed, the next call is served only once the
// cancellation reached the server and ended the run.
let next;
for (let attempt = 0; attempt < 40; attempt++) {
  next = await run("print('after')");
  if (next.stdout === "after\n") break;
  await sleep(250);
}
check(next.stdout === "after\n", "the cancellation reached the server: the call's seat is free", next);

const written = await run("import os\nos.makedirs('out', exist_ok=True)\nopen('out/hello.txt', 'w').write('from ts')");
check(written.files?.length === 1, "a run returns a file", written);
const read = await client.readResource({ uri: written.files[0].uri });
check(read.contents[0].text === "from ts", "the artifact is read", read);

await client.close();
console.log("all typescript sdk checks passed");
