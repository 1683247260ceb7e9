//! Round trips through the real client: put, then get, byte for byte.

use std::fs;

use ftp_cli::client::{NoProgress, TransferOptions};
use protocol::{Digest, DigestKind};

use crate::util::{assert_holds, pattern, InProcess};

/// The sizes where chunking goes wrong if it does: nothing, one byte, exactly one chunk, and
/// one byte into a second chunk; with the default digest and the fast one.
#[tokio::test(flavor = "multi_thread")]
async fn put_then_get_gives_back_the_same_bytes_around_one_chunk_with_either_digest() {
    let chunk = protocol::DEFAULT_CHUNK as usize;
    for digest in [DigestKind::Md5, DigestKind::Blake3] {
        let d = InProcess::new().start();
        let mut c = d.client_using(digest).await;
        for (seed, size) in [0, 1, chunk, chunk + 1].into_iter().enumerate() {
            let case = format!("{size} bytes with {}", digest.name());
            let data = pattern(size, seed as u64);
            let name = format!("{size}.bin");
            let (local, back) = (d.local_path(&name), d.local_path(&format!("{size}.back")));
            fs::write(&local, &data).unwrap();
            let want = Digest::of(digest, &data);

            let up = c
                .put(&local, &name, TransferOptions::default(), &mut NoProgress)
                .await
                .unwrap_or_else(|e| panic!("{case}: put failed: {e}"));
            assert_eq!((up.size, up.digest), (size as u64, want), "{case}: put");
            assert_holds(&d.root_path(&name), &data);

            let down = c
                .get(&name, &back, TransferOptions::default(), &mut NoProgress)
                .await
                .unwrap_or_else(|e| panic!("{case}: get failed: {e}"));
            assert_eq!((down.size, down.digest), (size as u64, want), "{case}: get");
            assert_holds(&back, &data);
        }
        c.bye().await;
    }
}
