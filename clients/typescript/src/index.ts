// The typed client of the sparc v1 API. `schema.d.ts` is generated from the service's OpenAPI
// document (`npm run generate`); this file adds what a generator cannot: keeping the access token
// fresh with the rotating refresh token, and a WebSocket that authenticates, resumes and
// reconnects.

import type { components, operations, paths } from "./schema.js";

export type { components, operations, paths };

/** A resource or body of the contract by its schema name: `Schema<"TaskResource">`. */
export type Schema<Name extends keyof components["schemas"]> = components["schemas"][Name];

type TokenPair = Schema<"TokenPair">;
type LoginResponse = Schema<"LoginResponse">;

/** The contract's error body: `detail` is a message, or the list of invalid fields (422). */
export interface ApiErrorBody {
  detail: string | { loc: (string | number)[]; msg: string; type: string }[];
  error_id?: string;
}

/** A non-2xx answer. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: ApiErrorBody | null,
    readonly requestId: string | null,
    readonly retryAfterSeconds: number | null,
  ) {
    super(
      typeof body?.detail === "string" ? body.detail : `HTTP ${status}${body ? ": invalid request" : ""}`,
    );
  }
}

/** Where the tokens live between page loads; in memory by default. */
export interface TokenStore {
  load(): Tokens | null;
  save(tokens: Tokens | null): void;
}

/** The tokens of a signed-in user, and when the access token expires (ms since the epoch). */
export interface Tokens {
  accessToken: string;
  refreshToken: string;
  accessExpiresAt: number;
}

class MemoryTokenStore implements TokenStore {
  private tokens: Tokens | null = null;
  load(): Tokens | null {
    return this.tokens;
  }
  save(tokens: Tokens | null): void {
    this.tokens = tokens;
  }
}

export interface ClientOptions {
  /** The service's origin, e.g. `https://sparc.example.com` (no trailing slash). */
  baseUrl: string;
  tokens?: TokenStore;
  /** Refresh the access token this long before it expires (default 60 s). */
  refreshMarginMs?: number;
  /** Called once the session is over (refresh refused): show the login page. */
  onSignedOut?: () => void;
}

type Method = "get" | "put" | "post" | "delete" | "patch";

/** The 2xx JSON body of an operation. */
type Answer<Op> = Op extends { responses: infer R }
  ? {
      [S in keyof R]: S extends 200 | 201 | 202
        ? R[S] extends { content: { "application/json": infer B } }
          ? B
          : never
        : never;
    }[keyof R]
  : never;

/** The JSON request body of an operation, if it takes one. */
type Body<Op> = Op extends { requestBody: { content: { "application/json": infer B } } }
  ? B
  : Op extends { requestBody?: { content: { "application/json": infer B } } }
    ? B
    : never;

type Operation<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;

type Params<Op> = Op extends { parameters: infer Q } ? Q : never;

export interface RequestOptions<Op> {
  /** Path parameters, substituted into `{name}`. */
  path?: Params<Op> extends { path?: infer T } ? T : never;
  /** Query parameters. */
  query?: Params<Op> extends { query?: infer T } ? T : never;
  body?: Body<Op>;
  /** Sent as `If-Match` (a version from an `ETag`). */
  ifMatch?: number;
  /** Sent as `Idempotency-Key` on creates. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

/** The REST client: typed requests, with the access token kept fresh. */
export class SparcClient {
  readonly baseUrl: string;
  private readonly store: TokenStore;
  private readonly refreshMarginMs: number;
  private readonly onSignedOut?: () => void;
  private refreshing: Promise<Tokens> | null = null;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.store = options.tokens ?? new MemoryTokenStore();
    this.refreshMarginMs = options.refreshMarginMs ?? 60_000;
    this.onSignedOut = options.onSignedOut;
  }

  /** Signs in; the tokens are kept for every later request. */
  async login(username: string, password: string): Promise<LoginResponse> {
    const answer = (await this.send("post", "/api/v1/auth/login", {
      body: { username, password },
      anonymous: true,
    })) as LoginResponse;
    this.keep(answer);
    return answer;
  }

  /** Ends the session on the server and forgets the tokens. */
  async logout(): Promise<void> {
    const tokens = this.store.load();
    if (tokens) {
      try {
        await this.send("post", "/api/v1/auth/logout", { body: { refresh_token: tokens.refreshToken } });
      } finally {
        this.store.save(null);
      }
    }
  }

  /** Whether a user is signed in (tokens kept). */
  get signedIn(): boolean {
    return this.store.load() !== null;
  }

  /**
   * A live access token, refreshed first when it expires within the margin. One refresh at a
   * time: a rotated refresh token used twice would end the session.
   */
  async accessToken(): Promise<string> {
    const tokens = this.store.load();
    if (!tokens) {
      throw new ApiError(401, { detail: "Not signed in" }, null, null);
    }
    if (tokens.accessExpiresAt - Date.now() > this.refreshMarginMs) {
      return tokens.accessToken;
    }
    return (await this.refresh()).accessToken;
  }

  /** Milliseconds until the access token expires, or `null` when signed out. */
  accessExpiresInMs(): number | null {
    const tokens = this.store.load();
    return tokens ? tokens.accessExpiresAt - Date.now() : null;
  }

  /** Trades the refresh token for a new pair (rotation). */
  refresh(): Promise<Tokens> {
    if (!this.refreshing) {
      this.refreshing = this.rotate().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  private async rotate(): Promise<Tokens> {
    const tokens = this.store.load();
    if (!tokens) {
      throw new ApiError(401, { detail: "Not signed in" }, null, null);
    }
    try {
      const pair = (await this.send("post", "/api/v1/auth/refresh", {
        body: { refresh_token: tokens.refreshToken },
        anonymous: true,
      })) as TokenPair;
      return this.keep(pair);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        this.store.save(null);
        this.onSignedOut?.();
      }
      throw error;
    }
  }

  private keep(pair: TokenPair): Tokens {
    const tokens = {
      accessToken: pair.access_token,
      refreshToken: pair.refresh_token,
      accessExpiresAt: Date.now() + pair.expires_in * 1000,
    };
    this.store.save(tokens);
    return tokens;
  }

  /**
   * Calls an operation of the contract: `client.call("get", "/api/v1/tasks", { query: { limit: 10 } })`.
   * Answers the 2xx JSON body; throws an {@link ApiError} otherwise.
   */
  async call<P extends keyof paths, M extends Method & keyof paths[P]>(
    method: M,
    path: P,
    options: RequestOptions<Operation<P, M>> = {},
  ): Promise<Answer<Operation<P, M>>> {
    return (await this.send(method, path as string, options)) as Answer<Operation<P, M>>;
  }

  private async send(
    method: Method,
    template: string,
    options: {
      path?: unknown;
      query?: unknown;
      body?: unknown;
      ifMatch?: number;
      idempotencyKey?: string;
      signal?: AbortSignal;
      anonymous?: boolean;
    },
  ): Promise<unknown> {
    const url = new URL(this.baseUrl + fillPath(template, options.path as Record<string, unknown>));
    for (const [name, value] of Object.entries((options.query ?? {}) as Record<string, unknown>)) {
      if (value !== undefined && value !== null) {
        url.searchParams.set(name, String(value));
      }
    }
    const attempt = async (token: string | null): Promise<Response> => {
      const headers: Record<string, string> = { accept: "application/json" };
      if (token) headers.authorization = `Bearer ${token}`;
      if (options.body !== undefined) headers["content-type"] = "application/json";
      if (options.ifMatch !== undefined) headers["if-match"] = `"${options.ifMatch}"`;
      if (options.idempotencyKey) headers["idempotency-key"] = options.idempotencyKey;
      return fetch(url, {
        method: method.toUpperCase(),
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        signal: options.signal,
      });
    };
    let response = await attempt(options.anonymous ? null : await this.accessToken());
    if (response.status === 401 && !options.anonymous && this.store.load()) {
      // The access token ended early (a revoked session is refused by the refresh too).
      response = await attempt((await this.refresh()).accessToken);
    }
    const text = await response.text();
    const body = text ? (JSON.parse(text) as unknown) : null;
    if (!response.ok) {
      const retryAfter = response.headers.get("retry-after");
      throw new ApiError(
        response.status,
        body as ApiErrorBody | null,
        response.headers.get("x-request-id"),
        retryAfter === null ? null : Number(retryAfter),
      );
    }
    return body;
  }
}

function fillPath(template: string, values: Record<string, unknown> | undefined): string {
  return template.replace(/\{(\w+)\}/g, (_, name: string) => {
    const value = values?.[name];
    if (value === undefined) throw new Error(`missing path parameter ${name}`);
    return encodeURIComponent(String(value));
  });
}

// ----- the WebSocket -----

type TaskResource = Schema<"TaskResource">;
type ProjectResource = Schema<"ProjectResource">;
type ExecutionResource = Schema<"ExecutionResource">;
type AgentResource = Schema<"AgentResource">;

interface Envelope<Type extends string, Payload> {
  type: Type;
  /** The change's opaque, ordered position (`null` on control frames). */
  event_id: string | null;
  timestamp: string;
  payload: Payload;
}

/** Every frame the server sends. */
export type ServerFrame =
  | Envelope<"ack", { connectionId: string; ackEventId: string; replayed: number }>
  | Envelope<
      "task_status_update",
      {
        taskId: string;
        status: string;
        updatedAt: string;
        output: string | null;
        error: string | null;
        assignee: string | null;
        projectId: string | null;
      }
    >
  | Envelope<"task_updated", { task: TaskResource }>
  | Envelope<"project_updated", { project: ProjectResource }>
  | Envelope<"execution_update", { execution: ExecutionResource }>
  | Envelope<"agent_activity_update", { agentId: string; status: string; currentTask: string | null; timestamp: string }>
  | Envelope<"agent_updated", { agent: AgentResource }>
  | Envelope<"resync_required", { reason?: string }>
  | Envelope<"authenticated", Record<string, unknown>>
  | Envelope<"ping" | "pong", Record<string, unknown>>
  | Envelope<"error", { error: string }>;

export interface SocketOptions {
  /** Called with every change and control frame, in order. */
  onFrame: (frame: ServerFrame) => void;
  /** The gap since the last event id is beyond retention: reload over REST. */
  onResyncRequired?: () => void;
  /** Resume after this event id (e.g. one kept across a page reload). */
  lastEventId?: string;
  /** First reconnect delay (default 500 ms), doubled up to `maxBackoffMs` (default 30 s). */
  backoffMs?: number;
  maxBackoffMs?: number;
}

/**
 * The live feed: connects with a fresh access token, sends `authenticate` before the token
 * expires, and after a drop reconnects with backoff, resuming from the last event id it saw.
 */
export class SparcSocket {
  private socket: WebSocket | null = null;
  private lastEventId: string | null;
  private attempts = 0;
  private closed = false;
  private reauthenticate: ReturnType<typeof setTimeout> | null = null;
  private reconnect: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly client: SparcClient,
    private readonly options: SocketOptions,
  ) {
    this.lastEventId = options.lastEventId ?? null;
  }

  /** The last change's event id: pass it to a later socket to resume there. */
  get position(): string | null {
    return this.lastEventId;
  }

  async open(): Promise<void> {
    this.closed = false;
    const token = await this.client.accessToken();
    const url = new URL(this.client.baseUrl.replace(/^http/, "ws") + "/ws");
    url.searchParams.set("token", token);
    if (this.lastEventId) url.searchParams.set("last_event_id", this.lastEventId);
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onmessage = (message) => this.receive(String(message.data));
    socket.onclose = (event) => this.dropped(event.code);
    this.scheduleAuthentication();
  }

  close(): void {
    this.closed = true;
    if (this.reauthenticate) clearTimeout(this.reauthenticate);
    if (this.reconnect) clearTimeout(this.reconnect);
    this.socket?.close(1000);
    this.socket = null;
  }

  private receive(text: string): void {
    const frame = JSON.parse(text) as ServerFrame;
    if (frame.type === "ack") {
      this.attempts = 0;
    } else if (frame.type === "ping") {
      this.socket?.send(JSON.stringify({ type: "pong" }));
    } else if (frame.type === "resync_required") {
      this.lastEventId = null;
      this.options.onResyncRequired?.();
    } else if (frame.event_id !== null) {
      this.lastEventId = frame.event_id;
    }
    this.options.onFrame(frame);
  }

  /** Sends a fresh token shortly before the current one expires. */
  private scheduleAuthentication(): void {
    if (this.reauthenticate) clearTimeout(this.reauthenticate);
    const expiresIn = this.client.accessExpiresInMs();
    if (expiresIn === null) return;
    this.reauthenticate = setTimeout(async () => {
      try {
        const token = (await this.client.refresh()).accessToken;
        this.socket?.send(JSON.stringify({ type: "authenticate", payload: { token } }));
        this.scheduleAuthentication();
      } catch {
        this.close();
      }
    }, Math.max(expiresIn - 60_000, 1_000));
  }

  private dropped(code: number): void {
    if (this.reauthenticate) clearTimeout(this.reauthenticate);
    // 1008: the token was refused; only a new sign-in helps.
    if (this.closed || code === 1008) return;
    const base = this.options.backoffMs ?? 500;
    const delay = Math.min(base * 2 ** this.attempts, this.options.maxBackoffMs ?? 30_000);
    this.attempts += 1;
    this.reconnect = setTimeout(() => {
      this.open().catch(() => this.dropped(1006));
    }, delay * (0.5 + Math.random() / 2));
  }
}
