//! `features refresh`: users' features computed from the app data and
//! written to Redis in batches, so serving never computes them on a cold path.

use crate::args::RefreshArgs;
use crate::logs::init_tracing;
use crate::store::{block_on, load_app_data};
use anyhow::Context;
use ml_server::interests::Interests;
use ml_train::train::TrainingData;
use std::time::Instant;

/// `features refresh`: every (or the named) user's features into Redis.
pub fn refresh_features(r: RefreshArgs) -> anyhow::Result<()> {
    init_tracing(&r.log.log_level);
    anyhow::ensure!(
        r.cache.redis_url.is_some(),
        "features refresh writes to Redis: set REDIS_URL"
    );
    let data = load_app_data(&r.data, &r.demo, &r.training)?;
    let mut td = TrainingData::new(&data);
    // With an embedding model, stored features carry their interests' meaning.
    crate::training::attach_interests(
        &Interests::load(&r.interests, r.backend.enable_gpu)?,
        &mut td,
    )?;
    let fingerprint = ml_server::cache::catalogue_fingerprint(
        td.catalogue.destinations.iter().map(|d| d.id.to_string()),
    );
    block_on(async {
        let caches = ml_server::cache::Caches::new(&r.cache, fingerprint).await?;
        anyhow::ensure!(
            caches.redis_connected(),
            "cannot reach {}",
            caches.store.describe()
        );
        let ids: Vec<uuid::Uuid> = if r.users.is_empty() {
            data.profiles.iter().map(|p| p.id).collect()
        } else {
            r.users.clone()
        };
        let unknown: Vec<String> = ids
            .iter()
            .filter(|id| td.profile(id).is_none())
            .map(|id| id.to_string())
            .collect();
        anyhow::ensure!(unknown.is_empty(), "unknown users: {}", unknown.join(", "));
        let bar = indicatif::ProgressBar::new(ids.len() as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} users, {per_sec}, {eta} left",
            )?,
        );
        let t0 = Instant::now();
        let empty = ml_core::types::UserHistory::default();
        let now = chrono::Utc::now();
        for chunk in ids.chunks(r.batch.max(1)) {
            let batch: Vec<ml_core::features::UserFeatures> = chunk
                .iter()
                .filter_map(|id| {
                    let p = td.profile(id)?;
                    let h = td.histories.get(id).unwrap_or(&empty);
                    let mut f =
                        ml_core::features::UserFeatures::from_history(p, h, &td.catalogue, now);
                    f.semantic_interests = td.semantic.as_ref().map(|s| s.profile_of(&p.interests));
                    Some(f)
                })
                .collect();
            caches
                .store_features(&batch)
                .await
                .with_context(|| format!("writing to {}", caches.store.describe()))?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{} users' features written to {} in {secs:.2}s ({:.0} users/s), valid for {} s",
            ids.len(),
            caches.store.describe(),
            ids.len() as f64 / secs.max(1e-9),
            caches.ttl().as_secs()
        );
        Ok(())
    })
}
