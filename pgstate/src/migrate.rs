//! Schema migrations: embedded SQL files applied in order at connect, under a transaction-wide
//! advisory lock so that instances starting at once apply each migration exactly once.

use tokio_postgres::GenericClient;

use crate::{Error, Result};

/// Every migration, in order; the number is the schema version it brings the database to.
/// A migration never changes once released: a change is a new file.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/001_initial.sql")),
    (2, include_str!("../migrations/002_upload_fields.sql")),
    (3, include_str!("../migrations/003_usage_reservations.sql")),
];

/// The advisory lock of migrations (single-key space; "ftpd" in ASCII, then 1). Other locks of
/// this crate use the two-key space, which never conflicts with this one.
const MIGRATION_LOCK: i64 = 0x6674_7064_0000_0001;

/// The version this build migrates to.
pub const KNOWN: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Brings the schema to [`KNOWN`]. Everything happens in one transaction that first takes the
/// lock: a second instance starting at once waits for it, then finds the migrations applied.
/// (Even `CREATE TABLE IF NOT EXISTS` needs the lock: run at once by two, one can fail on the
/// catalog's unique index.) A failed migration rolls back whole.
pub async fn apply(client: &mut tokio_postgres::Client) -> Result<()> {
    let tx = client.transaction().await?;
    // A migration of a large table may take longer than the 10 s every other statement is
    // allowed, and so may the wait of a second instance for the first one's migration.
    tx.batch_execute("SET LOCAL statement_timeout = '5min'; SET LOCAL lock_timeout = '5min'")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY,
             applied timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let found = current(&tx).await?;
    if found > KNOWN {
        return Err(Error::SchemaTooNew {
            found,
            known: KNOWN,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

/// The highest version applied; 0 for a new database.
pub async fn current(client: &impl GenericClient) -> Result<i32> {
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?;
    Ok(row.get(0))
}
