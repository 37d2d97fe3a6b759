// The client against a real ml-service: the release binary (ML_SERVICE_BIN,
// default ../../target/release/ml-service) on embedded defaults, a small demo
// dataset in a temporary folder, ports chosen by the OS. No mocks: overload,
// timeouts and outages are made by doing them to the real process.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, cpSync, writeFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import {
  MlServiceClient,
  MlServiceError,
  FIELDS,
  ENUMS,
  parseRetryAfter,
  backoffMs,
} from "../dist/index.js";

const BIN =
  process.env.ML_SERVICE_BIN ?? fileURLToPath(new URL("../../../target/release/ml-service", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "ml-client-"));
const base = { SQLITE_PATH: join(dir, "app.db"), MODEL_PATH: join(dir, "models"), DEMO_USERS: "400", LOG_LEVEL: "info" };
const running = new Set();

/** Start `ml-service serve`; resolves once it logs the address it listens on. */
function startService(env = {}, port = "0") {
  const proc = spawn(BIN, ["serve"], {
    env: { ...process.env, ...base, ML_SERVICE_PORT: port, PROMETHEUS_PORT: "0", GRPC_PORT: "0", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  running.add(proc);
  proc.on("exit", () => running.delete(proc));
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("ml-service did not start in 120 s")), 120_000);
    const lines = createInterface({ input: proc.stderr });
    lines.on("line", (line) => {
      let ev;
      try {
        ev = JSON.parse(line);
      } catch {
        return;
      }
      if (ev.message === "listening") {
        clearTimeout(t);
        const port = ev.addr.split(":").pop();
        resolve({ proc, port, url: `http://127.0.0.1:${port}` });
      }
    });
    proc.on("exit", (code) => reject(new Error(`ml-service exited with ${code}`)));
  });
}

function stop(proc) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
    proc.once("exit", resolve);
    proc.kill("SIGKILL");
  });
}

let svc;
let users;

before(async () => {
  svc = await startService();
  users = execFileSync(BIN, ["data", "users", "--limit", "20", "--log-level", "warn"], {
    env: { ...process.env, ...base },
  })
    .toString()
    .trim()
    .split("\n");
  assert.equal(users.length, 20);
});

after(async () => {
  await Promise.all([...running].map(stop));
  rmSync(dir, { recursive: true, force: true });
});

test("every endpoint answers with its typed body and the model version", async () => {
  const ml = new MlServiceClient({ baseUrl: svc.url + "/" });
  const m = await ml.matchScore({ user_a_id: users[0], user_b_id: users[1], context: { interests: ["food"] } });
  assert.equal(m.modelVersion, "travel_match/1");
  // Every answer has its own time-ordered id (UUID v7).
  assert.match(m.predictionId, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(m.attempts, 1);
  assert.equal(m.fallback, false);
  assert.ok(m.data.score >= 0 && m.data.score <= 1);
  assert.deepEqual(Object.keys(m.data.factors).sort(), ["interest_overlap", "personality", "travel_style"]);
  const r = await ml.recommendDestinations({ user_id: users[2], limit: 3, filters: { budget: "medium" } });
  assert.equal(r.modelVersion, "recommendation/1");
  assert.ok(r.predictionId > m.predictionId, "ids are time-ordered");
  assert.equal(r.data.recommendations.length, 3);
  const n = await ml.optimizeNotification({ user_id: users[3], notification_type: "match_found" });
  assert.equal(n.modelVersion, "notification_timing/1");
  assert.ok(Date.parse(n.data.send_at) > Date.now() - 1000);
  assert.ok(ENUMS.Channel.includes(n.data.channel));
  // The app reports what happened after the match answer; a repeat is
  // recorded once.
  const f = await ml.feedback({ prediction_id: m.predictionId, outcome: "matched" });
  assert.deepEqual(f.data, { prediction_id: m.predictionId, outcome: "matched", recorded: true });
  const again1 = await ml.feedback({ prediction_id: m.predictionId, outcome: "matched" });
  assert.equal(again1.data.recorded, false);
  await assert.rejects(ml.feedback({ prediction_id: r.predictionId, outcome: "opened" }), (e) => {
    assert.equal(e.status, 422);
    assert.equal(e.field, "outcome");
    return true;
  });
  const h = await ml.health();
  assert.deepEqual(h.data, { status: "healthy", models_loaded: true, database_connected: true, redis_connected: false, gpu_available: false });
  // The same request again is answered by the service's prediction cache.
  let again;
  for (let i = 0; i < 50; i++) {
    again = await ml.matchScore({ user_a_id: users[0], user_b_id: users[1], context: { interests: ["food"] } });
    if (again.cached) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.equal(again.cached, true);
  assert.equal(again.data.score, m.data.score);
});

test("the client's types match the service's OpenAPI document", async () => {
  const doc = await (await fetch(svc.url + "/openapi.json")).json();
  const schemas = doc.components.schemas;
  for (const [name, fields] of Object.entries(FIELDS)) {
    const s = schemas[name];
    assert.ok(s, `the document has no schema ${name}`);
    assert.deepEqual(Object.keys(s.properties).sort(), Object.keys(fields).sort(), `${name}: fields`);
    const required = Object.entries(fields)
      .filter(([, v]) => v === "required")
      .map(([k]) => k)
      .sort();
    assert.deepEqual([...(s.required ?? [])].sort(), required, `${name}: required fields`);
  }
  for (const [name, values] of Object.entries(ENUMS)) {
    assert.deepEqual([...schemas[name].enum].sort(), [...values].sort(), `${name}: values`);
  }
});

test("a 4xx is never retried and names the field", async () => {
  const retries = [];
  const ml = new MlServiceClient({ baseUrl: svc.url, onRetry: (i) => retries.push(i) });
  await assert.rejects(ml.matchScore({ user_a_id: users[0], user_b_id: users[0] }), (e) => {
    assert.ok(e instanceof MlServiceError);
    assert.equal(e.status, 422);
    assert.equal(e.code, "invalid_field");
    assert.equal(e.field, "user_b_id");
    assert.equal(e.attempts, 1);
    assert.equal(e.retryable, false);
    return true;
  });
  await assert.rejects(ml.recommendDestinations({ user_id: "00000000-0000-4000-8000-000000000000" }), (e) => {
    assert.equal(e.status, 404);
    assert.equal(e.code, "unknown_user");
    return true;
  });
  assert.equal(retries.length, 0);
});

test("503 is retried after Retry-After (capped), then the fallback answers", async () => {
  // A repository whose match model is corrupt: the service starts, serves the
  // other endpoints, and answers 503 model_unavailable with Retry-After: 1.
  const models = join(dir, "broken-models");
  cpSync(base.MODEL_PATH, models, { recursive: true });
  for (const v of readdirSync(join(models, "travel_match"))) {
    writeFileSync(join(models, "travel_match", v, "model.onnx"), "not a model");
  }
  const broken = await startService({ MODEL_PATH: models });
  const retries = [];
  const ml = new MlServiceClient({ baseUrl: broken.url, retries: 2, maxRetryDelayMs: 150, onRetry: (i) => retries.push(i) });
  const t0 = Date.now();
  await assert.rejects(ml.matchScore({ user_a_id: users[0], user_b_id: users[1] }), (e) => {
    assert.equal(e.status, 503);
    assert.equal(e.code, "model_unavailable");
    assert.equal(e.retryAfterMs, 1000);
    assert.equal(e.attempts, 3);
    return true;
  });
  // Retry-After said 1 s; the cap of 150 ms wins, and every wait used it.
  assert.deepEqual(
    retries.map((r) => r.delayMs),
    [150, 150],
  );
  assert.ok(Date.now() - t0 >= 300);
  const fb = await ml.matchScore(
    { user_a_id: users[0], user_b_id: users[1] },
    { fallback: (e) => ({ score: 0.5, confidence: 0, factors: { interest_overlap: 0, travel_style: 0, personality: 0 }, latency_ms: e.status }) },
  );
  assert.equal(fb.fallback, true);
  assert.equal(fb.modelVersion, null);
  assert.equal(fb.predictionId, null);
  assert.equal(fb.data.latency_ms, 503);
  // The rest of that service works.
  const r = await ml.recommendDestinations({ user_id: users[4] });
  assert.equal(r.attempts, 1);
  await stop(broken.proc);
});

test("a service that stops answering times out, and is retried", async () => {
  const frozen = await startService();
  const ml = new MlServiceClient({ baseUrl: frozen.url, timeoutMs: 300, retries: 1, retryBaseMs: 10 });
  await ml.health();
  // SIGSTOP: the kernel still accepts connections, nothing answers.
  frozen.proc.kill("SIGSTOP");
  const t0 = Date.now();
  await assert.rejects(ml.matchScore({ user_a_id: users[0], user_b_id: users[1] }), (e) => {
    assert.equal(e.kind, "timeout");
    assert.equal(e.attempts, 2);
    return true;
  });
  const took = Date.now() - t0;
  assert.ok(took >= 600 && took < 5000, `${took} ms`);
  frozen.proc.kill("SIGCONT");
  const ok = await ml.matchScore({ user_a_id: users[5], user_b_id: users[6] }, { timeoutMs: 5000 });
  assert.equal(ok.modelVersion, "travel_match/1");
  await stop(frozen.proc);
});

test("a restart during the call is bridged by retries", async () => {
  const first = await startService();
  const retries = [];
  const ml = new MlServiceClient({
    baseUrl: first.url,
    retries: 20,
    retryBaseMs: 50,
    maxRetryDelayMs: 200,
    onRetry: (i) => retries.push(i),
  });
  await stop(first.proc);
  // Nothing listens now; the service comes back on the same port shortly.
  const call = ml.recommendDestinations({ user_id: users[7] });
  await new Promise((r) => setTimeout(r, 300));
  await startService({}, first.port);
  const r = await call;
  assert.equal(r.modelVersion, "recommendation/1");
  assert.ok(retries.length >= 1);
  assert.ok(retries.every((i) => i.error.kind === "network"), JSON.stringify(retries.map((i) => i.error.kind)));
});

test("the bearer key is sent, and a refusal is not retried", async () => {
  const keyed = await startService({ ML_SERVICE_API_KEY: "edge-fn-key,next-key" });
  const retries = [];
  const anon = new MlServiceClient({ baseUrl: keyed.url, onRetry: (i) => retries.push(i) });
  await assert.rejects(anon.matchScore({ user_a_id: users[0], user_b_id: users[1] }), (e) => {
    assert.equal(e.status, 401);
    assert.equal(e.code, "unauthorized");
    assert.equal(e.attempts, 1);
    return true;
  });
  assert.equal(retries.length, 0);
  const ml = new MlServiceClient({ baseUrl: keyed.url, apiKey: "next-key" });
  const m = await ml.matchScore({ user_a_id: users[0], user_b_id: users[1] });
  assert.equal(m.modelVersion, "travel_match/1");
  await stop(keyed.proc);
});

test("backoff and Retry-After parsing", () => {
  assert.equal(parseRetryAfter("2"), 2000);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(parseRetryAfter("soon"), null);
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:03 GMT", now), 3000);
  assert.equal(backoffMs(1, 100, 2000, () => 1), 100);
  assert.equal(backoffMs(3, 100, 2000, () => 1), 400);
  assert.equal(backoffMs(10, 100, 2000, () => 1), 2000);
  assert.equal(backoffMs(3, 100, 2000, () => 0), 0);
});
