//! Fresh Postgres databases for tests (cargo feature `test-util`): each test
//! makes its own on the server at `DATABASE_URL` and drops it afterwards, even
//! when the test fails. Without a reachable Postgres a test says loudly that
//! it is skipped; under `CI=true` it fails instead, so CI always runs it.

use crate::{PgOptions, PgStore};
use std::time::Duration;
use tokio_postgres::NoTls;

/// The server's URL as an administrator (`DATABASE_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own, dropped (with any roles the test made) on drop.
pub struct TestDb {
    pub name: String,
    /// Roles the test made, dropped after the database.
    pub roles: Vec<String>,
}

impl TestDb {
    pub async fn new() -> Option<TestDb> {
        let admin = match tokio_postgres::connect(&admin_url(), NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
            }
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("CI=true but Postgres is unreachable: {e}")
            }
            Err(e) => {
                eprintln!("\n*** SKIPPED: Postgres is unreachable ({e}); set DATABASE_URL or start Postgres. Under CI=true this fails. ***\n");
                return None;
            }
        };
        let name = format!("mlsvc_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Some(TestDb {
            name,
            roles: vec![],
        })
    }

    pub fn url_as(&self, user: &str) -> String {
        let c: tokio_postgres::Config = admin_url().parse().unwrap();
        let host = match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        format!(
            "postgres://{user}@{host}:{}/{}",
            c.get_ports().first().copied().unwrap_or(5432),
            self.name
        )
    }

    pub fn url(&self) -> String {
        let c: tokio_postgres::Config = admin_url().parse().unwrap();
        self.url_as(c.get_user().unwrap_or("postgres"))
    }

    pub fn store(&self, read_only: bool) -> PgStore {
        PgStore::connect(
            &self.url(),
            &PgOptions {
                pool_size: 2,
                timeout: Some(Duration::from_secs(10)),
                read_only,
            },
        )
        .unwrap()
    }

    /// A fresh login role granted `group` (e.g. `ml_service_writer`),
    /// dropped with the database; returns its name.
    pub async fn login_in(&mut self, group: &str) -> String {
        let role = format!(
            "mlsvc_{}_{}",
            &group[..group.len().min(12)].replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            uuid::Uuid::new_v4().simple()
        );
        self.roles.push(role.clone());
        self.client()
            .await
            .batch_execute(&format!("CREATE ROLE {role} LOGIN IN ROLE {group}"))
            .await
            .unwrap();
        role
    }

    /// A read-write store on the test database, connected as `role`.
    pub fn store_as(&self, role: &str) -> PgStore {
        PgStore::connect(
            &self.url_as(role),
            &PgOptions {
                pool_size: 1,
                timeout: Some(Duration::from_secs(5)),
                read_only: false,
            },
        )
        .unwrap()
    }

    /// A direct connection to the test database, as the admin.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = std::iter::once(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .chain(
            self.roles
                .iter()
                .map(|r| format!("DROP ROLE IF EXISTS {r}")),
        )
        .collect::<Vec<_>>();
        let url = admin_url();
        // Drop runs inside the test's runtime: clean up from a thread of its own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
                tokio::spawn(conn);
                for s in sql {
                    if let Err(e) = c.batch_execute(&s).await {
                        eprintln!("cleanup: {s}: {e}");
                    }
                }
            })
        })
        .join()
        .ok();
    }
}
