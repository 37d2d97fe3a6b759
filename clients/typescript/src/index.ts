// A typed client for ml-service with the spec's best practices built in: a
// timeout per request (5 s by default), retries with exponential backoff and
// full jitter on network errors, 429 and 503 (honouring `Retry-After`), never
// on other 4xx answers; an optional fallback; the bearer key; and the model
// version behind every answer. Only `fetch`, `AbortSignal` and `setTimeout`:
// it runs unchanged in Deno, Supabase Edge Functions, Node 20+ and browsers.

import type {
  ErrorBody,
  FeedbackRequest,
  FeedbackResponse,
  HealthResponse,
  MatchRequest,
  MatchResponse,
  NotifyRequest,
  NotifyResponse,
  RecommendRequest,
  RecommendResponse,
} from "./types.ts";

export * from "./types.ts";

export interface ClientOptions {
  /** Where ml-service listens, e.g. `http://ml-service:8000`. */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Per attempt, in milliseconds (default 5000, the spec's client timeout). */
  timeoutMs?: number;
  /** Retries after the first attempt (default 2). */
  retries?: number;
  /** First backoff step in milliseconds (default 100); doubles per retry. */
  retryBaseMs?: number;
  /** Longest wait before a retry, `Retry-After` included (default 2000). */
  maxRetryDelayMs?: number;
  /** Called before each retry (logging, metrics). */
  onRetry?: (info: RetryInfo) => void;
  /** Another `fetch` (tests, instrumented clients). */
  fetch?: typeof fetch;
}

export interface RetryInfo {
  /** The attempt that failed, from 1. */
  attempt: number;
  delayMs: number;
  error: MlServiceError;
}

export interface CallOptions<T> {
  signal?: AbortSignal;
  timeoutMs?: number;
  /** Called with the final error instead of throwing; its value is the answer. */
  fallback?: (error: MlServiceError) => T | Promise<T>;
}

/** An answer and where it came from. */
export interface Answer<T> {
  data: T;
  /** `x-model-version`, e.g. `travel_match/3`; null for a fallback. */
  modelVersion: string | null;
  /**
   * `x-prediction-id`: the answer's id (a time-ordered UUID), the key of its
   * row in the service's prediction log and what `POST /feedback` names;
   * null for a fallback of this client's or a route that predicts nothing.
   */
  predictionId: string | null;
  /** Whether the service's prediction cache answered. */
  cached: boolean;
  /** Attempts made (1 = no retry). */
  attempts: number;
  /** True when `data` came from the fallback. */
  fallback: boolean;
}

export type ErrorKind = "http" | "timeout" | "network" | "aborted";

/** A failed call: an error answer (`status`, `code`, `field`) or no answer at all. */
export class MlServiceError extends Error {
  readonly kind: ErrorKind;
  readonly status: number | null;
  readonly code: string | null;
  readonly field: string | null;
  readonly retryAfterMs: number | null;
  attempts = 1;

  constructor(
    kind: ErrorKind,
    message: string,
    init: { status?: number; code?: string; field?: string | null; retryAfterMs?: number | null; cause?: unknown } = {},
  ) {
    super(message, { cause: init.cause });
    this.name = "MlServiceError";
    this.kind = kind;
    this.status = init.status ?? null;
    this.code = init.code ?? null;
    this.field = init.field ?? null;
    this.retryAfterMs = init.retryAfterMs ?? null;
  }

  /** Worth another try: no answer, or 429/503 (the service says "later"). */
  get retryable(): boolean {
    if (this.kind === "network" || this.kind === "timeout") return true;
    return this.status === 429 || this.status === 503;
  }
}

/** `Retry-After` as milliseconds (seconds or an HTTP date); null if absent or bad. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | null {
  if (value === null || value.trim() === "") return null;
  const secs = Number(value);
  if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** The wait before retry `attempt` (from 1): full jitter over an exponential step. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random = Math.random): number {
  const step = Math.min(maxMs, baseMs * 2 ** (attempt - 1));
  return Math.round(random() * step);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(t);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

export class MlServiceClient {
  private readonly base: string;
  private readonly opts: Required<Omit<ClientOptions, "apiKey" | "onRetry" | "fetch">> &
    Pick<ClientOptions, "apiKey" | "onRetry">;
  private readonly fetchFn: typeof fetch;

  constructor(options: ClientOptions) {
    this.base = options.baseUrl.replace(/\/+$/, "");
    this.opts = {
      baseUrl: this.base,
      apiKey: options.apiKey,
      timeoutMs: options.timeoutMs ?? 5000,
      retries: options.retries ?? 2,
      retryBaseMs: options.retryBaseMs ?? 100,
      maxRetryDelayMs: options.maxRetryDelayMs ?? 2000,
      onRetry: options.onRetry,
    };
    this.fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** How well two users would travel together. */
  matchScore(body: MatchRequest, call?: CallOptions<MatchResponse>): Promise<Answer<MatchResponse>> {
    return this.request("POST", "/match/score", body, call);
  }

  /** Destinations for a user, best first. */
  recommendDestinations(
    body: RecommendRequest,
    call?: CallOptions<RecommendResponse>,
  ): Promise<Answer<RecommendResponse>> {
    return this.request("POST", "/recommend/destinations", body, call);
  }

  /** When and how to send a notification. */
  optimizeNotification(body: NotifyRequest, call?: CallOptions<NotifyResponse>): Promise<Answer<NotifyResponse>> {
    return this.request("POST", "/notifications/optimize", body, call);
  }

  /** Report what happened after an answer (a repeat is recorded once, so
   * retrying is safe). */
  feedback(body: FeedbackRequest, call?: CallOptions<FeedbackResponse>): Promise<Answer<FeedbackResponse>> {
    return this.request("POST", "/feedback", body, call);
  }

  /** The service's health (never retried: it answers what is true now). */
  health(call?: CallOptions<HealthResponse>): Promise<Answer<HealthResponse>> {
    return this.request("GET", "/health", undefined, { ...call }, 0);
  }

  private async request<T>(
    method: string,
    path: string,
    body: unknown,
    call: CallOptions<T> = {},
    retries = this.opts.retries,
  ): Promise<Answer<T>> {
    let attempt = 0;
    for (;;) {
      attempt += 1;
      try {
        const { data, response } = await this.once<T>(method, path, body, call);
        return {
          data,
          modelVersion: response.headers.get("x-model-version"),
          predictionId: response.headers.get("x-prediction-id"),
          cached: response.headers.get("x-cache") === "hit",
          attempts: attempt,
          fallback: false,
        };
      } catch (e) {
        const error = e instanceof MlServiceError ? e : new MlServiceError("network", String(e), { cause: e });
        error.attempts = attempt;
        if (!error.retryable || attempt > retries || error.kind === "aborted") {
          if (call.fallback) {
            return { data: await call.fallback(error), modelVersion: null, predictionId: null, cached: false, attempts: attempt, fallback: true };
          }
          throw error;
        }
        const jitter = backoffMs(attempt, this.opts.retryBaseMs, this.opts.maxRetryDelayMs);
        const delayMs = Math.min(this.opts.maxRetryDelayMs, Math.max(jitter, error.retryAfterMs ?? 0));
        this.opts.onRetry?.({ attempt, delayMs, error });
        await sleep(delayMs, call.signal);
      }
    }
  }

  private async once<T>(
    method: string,
    path: string,
    body: unknown,
    call: CallOptions<T>,
  ): Promise<{ data: T; response: Response }> {
    const timeoutMs = call.timeoutMs ?? this.opts.timeoutMs;
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = call.signal ? AbortSignal.any([call.signal, timeout]) : timeout;
    const headers: Record<string, string> = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (this.opts.apiKey) headers.authorization = `Bearer ${this.opts.apiKey}`;
    let response: Response;
    let text: string;
    try {
      response = await this.fetchFn(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
      text = await response.text();
    } catch (e) {
      if (call.signal?.aborted) throw new MlServiceError("aborted", `${method} ${path}: aborted`, { cause: e });
      if (timeout.aborted) {
        throw new MlServiceError("timeout", `${method} ${path}: no answer within ${timeoutMs} ms`, { cause: e });
      }
      throw new MlServiceError("network", `${method} ${path}: ${String(e)}`, { cause: e });
    }
    if (!response.ok) {
      let err: ErrorBody["error"] | undefined;
      try {
        err = (JSON.parse(text) as ErrorBody).error;
      } catch {
        // Not the service's JSON (a proxy's page, say): keep the status.
      }
      throw new MlServiceError("http", `${method} ${path}: ${response.status} ${err?.message ?? response.statusText}`, {
        status: response.status,
        code: err?.code,
        field: err?.field ?? null,
        retryAfterMs: parseRetryAfter(response.headers.get("retry-after")),
      });
    }
    try {
      return { data: JSON.parse(text) as T, response };
    } catch (e) {
      throw new MlServiceError("http", `${method} ${path}: the answer is not JSON`, { status: response.status, cause: e });
    }
  }
}
