//! Round trips through the real client: put, then get, byte for byte.

use protocol::DigestKind;

use crate::util::{assert_holds, pattern, put_then_get, InProcess};

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
            let stored = async || assert_holds(&d.root_path(&name), &data);
            put_then_get(&d, &mut c, &name, &data, digest, &case, stored).await;
        }
        c.bye().await;
    }
}
