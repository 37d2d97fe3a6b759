//! `train`: train models on the app data and write new versions to the
//! repository (each checked against its trainer before it is written).

use crate::args::TrainArgs;
use crate::logs::init_tracing;
use crate::store::{block_on, load_app_data, repository};
use crate::training::attach_interests;
use ml_core::model::ModelKind;
use ml_server::interests::Interests;
use ml_train::publish::{summary, train_and_publish};
use ml_train::train::TrainingData;

pub fn train(t: TrainArgs) -> anyhow::Result<()> {
    init_tracing(&t.run.log.log_level);
    let mut kinds: Vec<ModelKind> = if t.kinds.is_empty() {
        ModelKind::ALL.to_vec()
    } else {
        t.kinds.iter().filter_map(|m| ModelKind::parse(m)).collect()
    };
    if t.if_missing {
        let repo = repository(&t.run.models)?;
        let mut missing = vec![];
        for k in kinds {
            if block_on(repo.latest(k))?.is_none() {
                missing.push(k);
            } else {
                println!("{k} has a version in {}: not trained", repo.describe());
            }
        }
        kinds = missing;
        if kinds.is_empty() {
            return Ok(());
        }
    }
    let data = load_app_data(&t.run.data, &t.run.demo, &t.run.training)?;
    println!(
        "read {} users, {} match outcomes, {} interactions, {} activity events, {} notifications (TRAIN_MAX_USERS={})",
        data.profiles.len(),
        data.matches.len(),
        data.interactions.len(),
        data.activity.len(),
        data.notifications.len(),
        t.run.training.train_max_users
    );
    let mut td = TrainingData::new(&data);
    td.rec_max_items = t.run.training.rec_max_destinations;
    td.rec_dense_max = t.run.training.rec_dense_max;
    attach_interests(
        &Interests::load(&t.run.interests, t.run.backend.enable_gpu)?,
        &mut td,
    )?;
    let repo = repository(&t.run.models)?;
    let backend = ml_server::app::backend(&t.run.backend)?;
    for k in kinds {
        let meta = train_and_publish(k, &td, t.seed, &repo, backend.as_ref())?;
        let baseline = meta
            .evaluation
            .as_ref()
            .map(|e| e.baseline.clone())
            .unwrap_or_default();
        println!(
            "{k} v{}: {} — baseline: {baseline}",
            meta.version,
            summary(&meta)
        );
    }
    Ok(())
}
