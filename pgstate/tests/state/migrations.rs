use crate::util::fresh_db;

/// Three instances starting at once on an empty database: all connect, and the schema is
/// applied exactly once.
#[tokio::test]
async fn three_instances_starting_at_once_migrate_once() {
    let Some(db) = fresh_db().await else { return };
    let (a, b, c) = tokio::join!(db.state("a"), db.state("b"), db.state("c"));
    for s in [&a, &b, &c] {
        assert_eq!(s.schema_version().await.unwrap(), 3);
    }
    let sql = db.sql().await;
    let applied: i64 = sql
        .query_one("SELECT count(*) FROM schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 3, "each migration is recorded once");
    // A restart finds nothing to do.
    let d = db.state("d").await;
    assert_eq!(d.schema_version().await.unwrap(), 3);
}

/// A database migrated by a newer ftpd is refused with one line saying what to do.
#[tokio::test]
async fn a_newer_schema_is_refused() {
    let Some(db) = fresh_db().await else { return };
    drop(db.state("a").await);
    let sql = db.sql().await;
    sql.execute("INSERT INTO schema_version (version) VALUES (99)", &[])
        .await
        .unwrap();
    let err = pgstate::State::connect(&db.url, "b")
        .await
        .err()
        .expect("refused");
    assert!(matches!(
        err,
        pgstate::Error::SchemaTooNew { found: 99, .. }
    ));
    assert!(err.to_string().contains("upgrade ftpd"), "{err}");
}

/// An unreachable database is one line, in about the connect timeout, not a hang.
#[tokio::test]
async fn an_unreachable_database_is_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://nobody@127.0.0.1:{port}/none");
    let err = pgstate::State::connect(&url, "a")
        .await
        .err()
        .expect("refused");
    assert!(err.is_transient());
    assert_eq!(err.to_string(), "the database did not answer");
}

/// Every connection of an instance cut by the server (as at a database restart): the next
/// calls get new connections and succeed, after at most a brief failure.
#[tokio::test]
async fn an_instance_reconnects_after_its_connections_are_cut() {
    let Some(db) = fresh_db().await else { return };
    let a = db.state("a").await;
    let _held = a.acquire_session("ann", None).await.unwrap();
    let sql = db.sql().await;
    let cut: i64 = sql
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(cut >= 1);
    let back = crate::util::until_some(std::time::Duration::from_secs(10), || async {
        a.sessions("ann").await.ok()
    })
    .await;
    assert_eq!(
        back,
        Some(1),
        "the state is still there, and reachable again"
    );
}
