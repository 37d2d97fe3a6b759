// supabase/functions/match-users/index.ts: a Supabase Edge Function (Deno)
// that scores two users with ml-service through the typed client. In a
// Supabase project, import the client from where you vendor it, e.g.
// `import { MlServiceClient } from "../_shared/ml-service-client/index.ts"`.
import { MlServiceClient } from "../../../../clients/typescript/src/index.ts";

const ml = new MlServiceClient({
  baseUrl: Deno.env.get("ML_SERVICE_URL") ?? "http://ml-service:8000",
  apiKey: Deno.env.get("ML_SERVICE_API_KEY"),
});

Deno.serve(async (req: Request) => {
  const { user_a_id, user_b_id } = await req.json();
  const answer = await ml.matchScore(
    { user_a_id, user_b_id },
    // When ml-service cannot answer (after retries), say so instead of failing.
    { fallback: () => ({ score: 0.5, confidence: 0, factors: { interest_overlap: 0.5, travel_style: 0.5, personality: 0.5 }, latency_ms: 0 }) },
  );
  return Response.json(answer.data, { headers: { "x-model-version": answer.modelVersion ?? "fallback" } });
});
