//! `data migrate|demo|import|users`: the app data's schema, the demo
//! dataset, validated imports (tables or MovieLens) and user ids.

use crate::args::{DataCommand, DemoArgs, ImportArgs};
use crate::logs::init_tracing;
use crate::store::{block_on, empty_store, writable_store};
use anyhow::Context;
use ml_server::app::Access;
use ml_train::generator::{generate, GeneratorConfig};
use std::time::Instant;

/// Run a `data` command.
pub fn data(command: DataCommand) -> anyhow::Result<()> {
    match command {
        DataCommand::Users(u) => {
            init_tracing(&u.log.log_level);
            let store = crate::store::open(&u.data, &u.demo, Access::Read)?;
            for id in block_on(store.user_ids(u.limit))? {
                println!("{id}");
            }
            Ok(())
        }
        DataCommand::Migrate(m) => {
            init_tracing(&m.log.log_level);
            let store = writable_store(&m.data)?;
            println!("schema of {} is up to date", store.describe());
            Ok(())
        }
        DataCommand::Import(i) => import(i),
        DataCommand::Demo(d) => demo(d),
    }
}

/// `data demo`: generate the demo dataset into the store.
fn demo(d: DemoArgs) -> anyhow::Result<()> {
    init_tracing(&d.log.log_level);
    if d.if_empty {
        let store = writable_store(&d.data)?;
        let n = block_on(store.count_profiles())?;
        if n > 0 {
            println!(
                "{} already holds {n} users: nothing to do",
                store.describe()
            );
            return Ok(());
        }
    }
    let store = empty_store(&d.data, d.replace)?;
    let t0 = Instant::now();
    let data = generate(&GeneratorConfig {
        users: d.users.unwrap_or(d.demo.demo_users),
        seed: d.seed.unwrap_or(d.demo.demo_seed),
        synonym_rate: d.demo.demo_synonym_rate,
        ..Default::default()
    });
    let generated = t0.elapsed();
    block_on(store.write_dataset(&data, d.replace))
        .with_context(|| format!("writing to {}", store.describe()))?;
    println!(
        "{} users, {} interactions, {} match outcomes, {} activity events, {} notifications: generated in {:.2}s, written in {:.2}s to {}",
        data.profiles.len(),
        data.interactions.len(),
        data.matches.len(),
        data.activity.len(),
        data.notifications.len(),
        generated.as_secs_f64(),
        (t0.elapsed() - generated).as_secs_f64(),
        store.describe()
    );
    Ok(())
}

/// `data import`: MovieLens, or table files validated row by row.
fn import(i: ImportArgs) -> anyhow::Result<()> {
    init_tracing(&i.log.log_level);
    let files: Vec<std::path::PathBuf> = if i.path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(&i.path)
            .with_context(|| format!("reading {}", i.path.display()))?
            .filter_map(|f| f.ok().map(|f| f.path()))
            .collect();
        v.sort();
        v
    } else {
        vec![i.path.clone()]
    };
    if files
        .iter()
        .any(|p| p.extension().is_some_and(|x| x == "inter"))
    {
        return import_movielens(&i, &files);
    }
    let mut imp = ml_data::import::Import::default();
    let mut read = 0;
    for table in ml_data::import::TABLES {
        for f in &files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let (Some((stem, _)), Some(format)) =
                (name.split_once('.'), ml_data::import::Format::of(name))
            else {
                continue;
            };
            if stem != table {
                continue;
            }
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            imp.read(table, name, format, &text);
            read += 1;
        }
    }
    anyhow::ensure!(
        read > 0,
        "no table files in {} (expected names like profiles.csv or interactions.jsonl, for the tables {})",
        i.path.display(),
        ml_data::import::TABLES.join(", ")
    );
    // Rows are added to what is stored; --replace replaces it instead.
    let store = writable_store(&i.data)?;
    let (users, destinations) = if i.replace {
        (vec![], vec![])
    } else {
        block_on(store.ids())?
    };
    imp.check_references(&users, &destinations);
    if !imp.errors.is_empty() {
        const SHOWN: usize = 50;
        for e in imp.errors.iter().take(SHOWN) {
            eprintln!("{e}");
        }
        if imp.errors.len() > SHOWN {
            eprintln!("… and {} more", imp.errors.len() - SHOWN);
        }
        anyhow::bail!(
            "{} problem(s) in the import; nothing was written to {}",
            imp.errors.len(),
            store.describe()
        );
    }
    let d = &imp.data;
    block_on(store.write_dataset(d, i.replace))
        .with_context(|| format!("writing to {}", store.describe()))?;
    println!(
        "{} profiles, {} destinations, {} interactions, {} match outcomes, {} activity events, {} notifications, {} channel consents: written to {}",
        d.profiles.len(),
        d.destinations.len(),
        d.interactions.len(),
        d.matches.len(),
        d.activity.len(),
        d.notifications.len(),
        d.consents.len(),
        store.describe()
    );
    Ok(())
}

fn import_movielens(i: &ImportArgs, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let read = |ext: &str| -> anyhow::Result<String> {
        let f = files
            .iter()
            .find(|p| p.extension().is_some_and(|x| x == ext))
            .with_context(|| format!("no .{ext} file in {}", i.path.display()))?;
        Ok(std::fs::read_to_string(f)?)
    };
    let ratings = ml_train::movielens::parse_inter(&read("inter")?)?;
    let data = ml_train::movielens::to_dataset(
        &ratings,
        &read("item").unwrap_or_default(),
        &read("user").unwrap_or_default(),
        3.0,
    );
    let store = empty_store(&i.data, i.replace)?;
    block_on(store.write_dataset(&data, i.replace))
        .with_context(|| format!("writing to {}", store.describe()))?;
    println!(
        "{} users, {} movies as destinations, {} ratings ≥ 3 as interactions, {} sessions: written to {}",
        data.profiles.len(),
        data.destinations.len(),
        data.interactions.len(),
        data.activity.len(),
        store.describe()
    );
    Ok(())
}
