//! Resumable S3 uploads registered in PostgreSQL (`--database`), as two instances see them:
//! two backends on one bucket, each with its own `pgstate::State`, play two ftpd instances.
//! A takeover fences the old writer; the new holder completes with the registry's parts.

mod quota;
mod services;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ftpd::store::PgRegistry;
use protocol::{Digest, DigestKind};
use s3store::{
    Client, Config, Credentials, ErrorKind, PartBudget, PartSize, ResumableUpload, S3Backend,
    S3Options, Timeouts, UploadRegistry, UploadSpec, MIN_PART_SIZE,
};
use services::{fresh_db, moto, Moto};
use storage::{Backend, Error, UploadRequest, VPath, Writing};

/// The chunks the transfer engine hands over: 1 MiB, as its default.
const CHUNK: usize = 1 << 20;
const PART: usize = MIN_PART_SIZE as usize;

/// Deterministic bytes that differ at every offset within a part.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn config(m: &Moto) -> Config {
    Config {
        bucket: "files".to_owned(),
        prefix: String::new(),
        endpoint: Some(format!("http://127.0.0.1:{}", m.port).parse().unwrap()),
        region: "us-east-1".to_owned(),
        credentials: Credentials {
            key: "testing".to_owned(),
            secret: "testing".to_owned(),
            token: None,
        },
    }
}

fn raw(m: &Moto) -> Arc<Client> {
    Arc::new(Client::new(config(m), Timeouts::default()).unwrap())
}

async fn open_uploads(m: &Moto) -> usize {
    raw(m)
        .list_uploads_page("", None)
        .await
        .unwrap()
        .uploads
        .len()
}

/// One ftpd instance's view of the service: its shared state and its S3 backend, whose
/// uploads are registered in that state.
struct Instance {
    state: pgstate::State,
    backend: S3Backend,
}

impl Instance {
    async fn start(m: &Moto, db: &str, name: &str) -> Instance {
        let state = pgstate::State::connect(db, name)
            .await
            .unwrap_or_else(|e| panic!("connect: {}", e.detail()));
        let registry: Arc<dyn UploadRegistry> = Arc::new(PgRegistry::new(state.clone()));
        let opts = S3Options {
            part_budget: 64 << 20,
            part_size: PartSize::new(MIN_PART_SIZE).unwrap(),
            holder: name.to_owned(),
            registry: Some(registry),
            ..S3Options::default()
        };
        let backend = S3Backend::open(config(m), opts).await.unwrap();
        Instance { state, backend }
    }

    /// Instances "a" and "b" on one bucket and one database.
    async fn pair(m: &Moto, db: &str) -> (Instance, Instance) {
        (
            Instance::start(m, db, "a").await,
            Instance::start(m, db, "b").await,
        )
    }

    fn registry(&self) -> Arc<dyn UploadRegistry> {
        Arc::new(PgRegistry::new(self.state.clone()))
    }
}

/// A resumable upload of MD5 digests in minimum-size parts, started by instance "a".
fn held_by_a(client_id: Option<&str>, size: Option<u64>) -> UploadSpec {
    UploadSpec {
        kind: DigestKind::Md5,
        part_size: PartSize::new(MIN_PART_SIZE).unwrap(),
        holder: "a".to_owned(),
        client_id: client_id.map(str::to_owned),
        size,
        recorded: true,
    }
}

/// A moto bucket and a fresh database, or `None` when either is not installed.
async fn services() -> Option<(Moto, String)> {
    let m = moto()?;
    let db = fresh_db()?;
    raw(&m).create_bucket().await.unwrap();
    Some((m, db))
}

fn p(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).unwrap()
}

fn resumable(size: usize, resume: bool) -> UploadRequest {
    UploadRequest {
        size: size as u64,
        overwrite: false,
        upload_id: Some("u1".to_owned()),
        resume,
        mtime: None,
        digest: DigestKind::Md5,
    }
}

/// Writes `bytes[w.offset()..to]` in chunks with their running digests, as the transfer
/// engine does; the first refusal comes back.
async fn write_to(w: &mut Box<dyn Writing>, bytes: &[u8], to: usize) -> Result<(), Error> {
    let mut hasher = w.prefix();
    for piece in bytes[w.offset() as usize..to].chunks(CHUNK) {
        hasher.update(piece);
        w.write(Bytes::copy_from_slice(piece), hasher.digest())
            .await?;
    }
    Ok(())
}

async fn read_all(b: &dyn Backend, path: &str) -> Vec<u8> {
    use futures::StreamExt as _;
    let mut r = b.read(&p(path), 0).await.unwrap();
    let mut out = Vec::new();
    while let Some(piece) = r.body.next().await {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

/// Instance A's writer loses the upload to instance B (the client came back through B): A's
/// next part is refused, its give-up leaves B's upload alone, and B completes from the part
/// A had recorded with exactly the client's bytes, though A stored a part of other bytes
/// under the number B sends next.
#[tokio::test]
async fn a_writer_whose_upload_was_taken_over_is_fenced_and_the_new_holder_completes() {
    let Some((m, db)) = services().await else {
        return;
    };
    let (a, b) = Instance::pair(&m, &db).await;
    let bytes = data(3 * PART + 7);
    let mut on_a = a
        .backend
        .begin_upload(&p("big"), &resumable(bytes.len(), false))
        .await
        .unwrap();
    write_to(&mut on_a, &bytes, PART + CHUNK).await.unwrap();

    let mut on_b = b
        .backend
        .begin_upload(&p("big"), &resumable(bytes.len(), true))
        .await
        .unwrap();
    assert_eq!(
        on_b.offset(),
        PART as u64,
        "continues after A's recorded part"
    );
    assert_eq!(on_b.prefix().digest(), Digest::md5(&bytes[..PART]));

    // A still has its client's bytes coming; these differ from the file's, so that the
    // object shows whether any of A's part 2 was used.
    let other: Vec<u8> = bytes.iter().map(|b| !b).collect();
    let refused = write_to(&mut on_a, &other, 2 * PART)
        .await
        .expect_err("a fenced writer's part is refused");
    assert!(matches!(refused, Error::Busy { .. }), "{refused}");
    assert_eq!(
        refused.to_string(),
        "/big: a newer attempt at the same upload took over"
    );
    on_a.abort().await;
    assert_eq!(
        open_uploads(&m).await,
        1,
        "A's give-up leaves B's upload open"
    );

    write_to(&mut on_b, &bytes, bytes.len()).await.unwrap();
    on_b.commit(Digest::md5(&bytes), false).await.unwrap();
    assert!(
        read_all(&a.backend, "big").await == bytes,
        "exactly the file"
    );
    assert_eq!(open_uploads(&m).await, 0);
    assert_eq!(a.state.upload("big").await.unwrap(), None, "forgotten");
}

/// A fenced writer that reaches completion is refused there too: it never completes the S3
/// upload, which its new holder then completes.
#[tokio::test]
async fn a_fenced_writer_never_completes() {
    let Some((m, db)) = services().await else {
        return;
    };
    let (a, b) = Instance::pair(&m, &db).await;
    let c = raw(&m);
    let budget = PartBudget::new(64 << 20);
    let bytes = data(PART + 10);
    let spec = held_by_a(Some(":u1"), Some(bytes.len() as u64));
    let mut old = ResumableUpload::start_in(a.registry(), c.clone(), "f", &budget, spec)
        .await
        .unwrap();
    old.write(&bytes).await.unwrap();
    assert_eq!(old.parts_sent(), 1);

    let mut new = ResumableUpload::resume_in(b.registry(), c.clone(), "f", &budget, "b", |_| true)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(new.offset(), PART as u64);
    assert!(new.record().lease.token > old.record().lease.token);

    let e = old
        .finish(Digest::md5(&bytes), false, None)
        .await
        .expect_err("fenced at completion");
    assert_eq!(e.kind(), ErrorKind::Fenced, "{}", e.detail());
    assert_eq!(
        e.to_string(),
        "the upload was taken over by a newer attempt"
    );
    assert_eq!(c.head("f").await.unwrap_err().kind(), ErrorKind::NotFound);

    new.write(&bytes[PART..]).await.unwrap();
    new.finish(Digest::md5(&bytes), false, None).await.unwrap();
    let mut d = c.get("f", 0, None).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = d.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert!(got == bytes);
}

/// A resume through the registry, after the writing instance is gone, continues from the
/// recorded offset with the digest state and the chunk digests recorded with the parts.
#[tokio::test]
async fn an_upload_cut_on_one_instance_resumes_on_another_from_the_recorded_offset() {
    let Some((m, db)) = services().await else {
        return;
    };
    let bytes = data(3 * PART + 7);
    {
        let a = Instance::start(&m, &db, "a").await;
        let mut w = a
            .backend
            .begin_upload(&p("big"), &resumable(bytes.len(), false))
            .await
            .unwrap();
        write_to(&mut w, &bytes, 2 * PART + 3 * CHUNK / 2)
            .await
            .unwrap();
        drop(w); // the connection is gone; then instance A too
    }
    let b = Instance::start(&m, &db, "b").await;
    let mut w = b
        .backend
        .begin_upload(&p("big"), &resumable(bytes.len(), true))
        .await
        .unwrap();
    assert_eq!(w.offset(), 2 * PART as u64, "from the last recorded part");
    assert_eq!(w.prefix().digest(), Digest::md5(&bytes[..2 * PART]));
    write_to(&mut w, &bytes, bytes.len()).await.unwrap();
    w.commit(Digest::md5(&bytes), false).await.unwrap();
    let mut r = b.backend.read(&p("big"), 0).await.unwrap();
    let recorded = r.recorded.take().expect("the digests are recorded");
    let mut h = protocol::Hasher::new(DigestKind::Md5);
    let every: Vec<Digest> = bytes
        .chunks(CHUNK)
        .map(|c| {
            h.update(c);
            h.digest()
        })
        .collect();
    assert_eq!(
        recorded.chunks, every,
        "the chunks before the resume came from the registry"
    );
    assert!(read_all(&b.backend, "big").await == bytes);
    // No record object in the bucket: the registry held it.
    let records = raw(&m)
        .list_all(s3store::UPLOADS_PREFIX, None, 10)
        .await
        .unwrap();
    assert!(records.objects.is_empty(), "{records:?}");
}

/// The sweeper takes abandoned uploads from the registry: aborted on S3, forgotten in the
/// database; one written to within the age is spared.
#[tokio::test]
async fn the_sweeper_aborts_what_the_registry_holds_abandoned() {
    let Some((m, db)) = services().await else {
        return;
    };
    let a = Instance::start(&m, &db, "a").await;
    let bytes = data(PART + 1);
    let mut w = a
        .backend
        .begin_upload(&p("f"), &resumable(bytes.len(), false))
        .await
        .unwrap();
    write_to(&mut w, &bytes, PART + 1).await.unwrap();
    drop(w);
    assert_eq!(open_uploads(&m).await, 1);
    assert_eq!(
        a.backend.sweep(Duration::from_secs(3600)).await.unwrap(),
        0,
        "written to just now"
    );
    assert_eq!(a.backend.sweep(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(open_uploads(&m).await, 0);
    assert_eq!(a.state.upload("f").await.unwrap(), None);
}

/// The part a fenced writer had in flight lands after the new holder stored the same number:
/// completion names the registry's ETag for it, so S3 refuses (InvalidPart) rather than
/// complete with the fenced writer's bytes; nothing wrong is ever visible.
#[tokio::test]
async fn a_late_part_of_a_fenced_writer_is_never_completed() {
    let Some((m, db)) = services().await else {
        return;
    };
    let (a, b) = Instance::pair(&m, &db).await;
    let c = raw(&m);
    let budget = PartBudget::new(64 << 20);
    let bytes = data(2 * PART + 10);
    let spec = held_by_a(None, None);
    let mut old = ResumableUpload::start_in(a.registry(), c.clone(), "f", &budget, spec)
        .await
        .unwrap();
    old.write(&bytes[..PART]).await.unwrap();
    let upload_id = old.record().upload_id.clone();
    let mut new = ResumableUpload::resume_in(b.registry(), c.clone(), "f", &budget, "b", |_| true)
        .await
        .unwrap()
        .expect("registered");
    new.write(&bytes[PART..2 * PART]).await.unwrap();
    let late: Vec<u8> = bytes[PART..2 * PART].iter().map(|b| !b).collect();
    c.upload_part("f", &upload_id, 2, Bytes::from(late))
        .await
        .unwrap();
    new.write(&bytes[2 * PART..]).await.unwrap();
    let e = new
        .finish(Digest::md5(&bytes), false, None)
        .await
        .expect_err("S3 refuses a part whose ETag is not the registry's");
    assert_eq!(
        c.head("f").await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "{}",
        e.detail()
    );
}

/// The database restarted under an upload in flight: the part sent while it was down is
/// recorded once it is back, and the upload completes with the file's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_flight_rides_over_a_database_restart() {
    let Some(m) = moto() else { return };
    let Some(pg) = services::Restartable::start() else {
        return;
    };
    let pg = Arc::new(pg);
    let c = raw(&m);
    c.create_bucket().await.unwrap();
    let a = Instance::start(&m, &pg.url(), "a").await;
    let bytes = Arc::new(data(2 * PART + 7));
    let mut w = a
        .backend
        .begin_upload(&p("big"), &resumable(bytes.len(), false))
        .await
        .unwrap();
    write_to(&mut w, &bytes, PART).await.unwrap();
    let upload_id = c.list_uploads_page("", None).await.unwrap().uploads[0]
        .upload_id
        .clone();

    let down = pg.clone();
    tokio::task::spawn_blocking(move || down.down())
        .await
        .unwrap();
    let sent = bytes.clone();
    let writer = tokio::spawn(async move { write_to(&mut w, &sent, 2 * PART).await.map(|()| w) });
    // Part 2 on S3 while the database is down: its record is being tried now.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !c
        .list_parts("big", &upload_id)
        .await
        .unwrap()
        .iter()
        .any(|s| s.number == 2)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "part 2 never reached S3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!writer.is_finished(), "recorded with the database down?");
    let up = pg.clone();
    tokio::task::spawn_blocking(move || up.up()).await.unwrap();

    let mut w = writer
        .await
        .unwrap()
        .expect("the part is recorded once the database is back");
    write_to(&mut w, &bytes, bytes.len()).await.unwrap();
    w.commit(Digest::md5(&bytes), false).await.unwrap();
    assert!(read_all(&a.backend, "big").await == *bytes);
    assert_eq!(a.state.upload("big").await.unwrap(), None);
}
