// The bodies of ml-service's API, as its OpenAPI document (`GET /openapi.json`)
// describes them. `FIELDS` lists each body's fields; the compiler checks the
// lists against these types, and the tests check them against the document the
// running service serves, so a drift on either side fails.

export type Budget = "low" | "medium" | "high";
export type TripDuration = "weekend" | "week" | "month";
export type Channel = "push" | "email" | "sms";
export type NotificationType = "match_found" | "message" | "reminder";
export type Urgency = "low" | "medium" | "high";

export interface MatchContextBody {
  /** A destination name, e.g. "Paris". */
  destination?: string | null;
  /** `YYYY-MM-DD`, or a range `YYYY-MM-DD/YYYY-MM-DD`. */
  dates?: string | null;
  /** Interests the trip is about, e.g. ["art", "food"]. */
  interests?: string[] | null;
}

export interface MatchRequest {
  user_a_id: string;
  user_b_id: string;
  context?: MatchContextBody | null;
}

export interface MatchFactors {
  interest_overlap: number;
  travel_style: number;
  personality: number;
}

export interface MatchResponse {
  /** Calibrated probability that the two travel well together. */
  score: number;
  /** Expected accuracy of the call, discounted for missing data. */
  confidence: number;
  factors: MatchFactors;
  /** Time spent in the server, in milliseconds. */
  latency_ms: number;
  /** Present (true) only when the model could not answer and this is a
   * cached answer of another version or the documented default. */
  fallback?: boolean;
}

export interface RecommendFilters {
  budget?: Budget | null;
  duration?: TripDuration | null;
}

export interface RecommendRequest {
  user_id: string;
  /** 1..=100, default 10. */
  limit?: number;
  filters?: RecommendFilters | null;
}

export interface Recommendation {
  destination: string;
  score: number;
  reason: string;
}

export interface RecommendResponse {
  recommendations: Recommendation[];
  /** Present (true) only when the model could not answer and this is a
   * cached answer of another version or the documented default. */
  fallback?: boolean;
}

export interface NotifyRequest {
  user_id: string;
  notification_type: NotificationType;
  /** Default `medium`. */
  urgency?: Urgency;
}

export interface NotifyResponse {
  /** RFC 3339 instant in UTC, always in the future. */
  send_at: string;
  channel: Channel;
  confidence: number;
  reason: string;
  /** Present (true) only when the model could not answer and this is a
   * cached answer of another version or the documented default. */
  fallback?: boolean;
}

export interface HealthResponse {
  status: "healthy" | "degraded";
  models_loaded: boolean;
  /** The app-data store (SQLite or Postgres) answered a ping just now. */
  database_connected: boolean;
  redis_connected: boolean;
  gpu_available: boolean;
}

/** What happened after an answer. A match: `matched` / `not_matched`; a
 * recommendation: `saved`, `booked`, `visited` (with `destination`); a
 * notification: `opened` / `not_opened`. */
export type OutcomeKind = "matched" | "not_matched" | "saved" | "booked" | "visited" | "opened" | "not_opened";

export interface FeedbackRequest {
  /** The answer's `predictionId` (its `x-prediction-id`). */
  prediction_id: string;
  outcome: OutcomeKind;
  /** Recommendations only: the recommended destination, by name. */
  destination?: string | null;
  /** When it happened (RFC 3339); default now. */
  occurred_at?: string | null;
}

export interface FeedbackResponse {
  prediction_id: string;
  outcome: OutcomeKind;
  /** False when this exact outcome was already recorded (a repeat). */
  recorded: boolean;
}

/** The error body of every failed request. */
export interface ErrorBody {
  error: { code: string; message: string; field?: string | null };
}

/** Each field of a body, marked required or optional (as in the OpenAPI schema). */
type Fields<T> = { [K in keyof Required<T>]: undefined extends T[K] ? "optional" : "required" };

/** The schema names and fields of the bodies, checked against the types above. */
export const FIELDS = {
  MatchRequest: { user_a_id: "required", user_b_id: "required", context: "optional" },
  MatchContextBody: { destination: "optional", dates: "optional", interests: "optional" },
  MatchResponse: { score: "required", confidence: "required", factors: "required", latency_ms: "required", fallback: "optional" },
  MatchFactors: { interest_overlap: "required", travel_style: "required", personality: "required" },
  RecommendRequest: { user_id: "required", limit: "optional", filters: "optional" },
  RecommendFilters: { budget: "optional", duration: "optional" },
  RecommendResponse: { recommendations: "required", fallback: "optional" },
  Recommendation: { destination: "required", score: "required", reason: "required" },
  NotifyRequest: { user_id: "required", notification_type: "required", urgency: "optional" },
  NotifyResponse: { send_at: "required", channel: "required", confidence: "required", reason: "required", fallback: "optional" },
  HealthResponse: { status: "required", models_loaded: "required", database_connected: "required", redis_connected: "required", gpu_available: "required" },
  FeedbackRequest: { prediction_id: "required", outcome: "required", destination: "optional", occurred_at: "optional" },
  FeedbackResponse: { prediction_id: "required", outcome: "required", recorded: "required" },
} as const satisfies {
  MatchRequest: Fields<MatchRequest>;
  MatchContextBody: Fields<MatchContextBody>;
  MatchResponse: Fields<MatchResponse>;
  MatchFactors: Fields<MatchFactors>;
  RecommendRequest: Fields<RecommendRequest>;
  RecommendFilters: Fields<RecommendFilters>;
  RecommendResponse: Fields<RecommendResponse>;
  Recommendation: Fields<Recommendation>;
  NotifyRequest: Fields<NotifyRequest>;
  NotifyResponse: Fields<NotifyResponse>;
  HealthResponse: Fields<HealthResponse>;
  FeedbackRequest: Fields<FeedbackRequest>;
  FeedbackResponse: Fields<FeedbackResponse>;
};

/** The enumerations, checked against the document's `enum` lists. */
export const ENUMS = {
  Budget: ["low", "medium", "high"],
  TripDuration: ["weekend", "week", "month"],
  Channel: ["push", "email", "sms"],
  NotificationType: ["match_found", "message", "reminder"],
  Urgency: ["low", "medium", "high"],
  OutcomeKind: ["matched", "not_matched", "saved", "booked", "visited", "opened", "not_opened"],
} as const satisfies {
  Budget: readonly Budget[];
  TripDuration: readonly TripDuration[];
  Channel: readonly Channel[];
  NotificationType: readonly NotificationType[];
  Urgency: readonly Urgency[];
  OutcomeKind: readonly OutcomeKind[];
};
