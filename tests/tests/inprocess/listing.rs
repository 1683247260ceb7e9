//! Directory listings: a directory too large for one frame.

use std::collections::BTreeSet;
use std::fs;

use protocol::Message;

use crate::util::InProcess;

/// A listing is cut into `listing` frames of at most 32 KiB each: a directory that needs several
/// arrives whole through the client, every name once, and the raw frames show it was cut.
#[tokio::test(flavor = "multi_thread")]
async fn a_listing_too_large_for_one_frame_arrives_whole() {
    let d = InProcess::new().start();
    // Long names, so that a few hundred entries take several frames.
    let names: BTreeSet<String> = (0..300)
        .map(|i| format!("{}-{i:03}.bin", "n".repeat(200)))
        .collect();
    for name in &names {
        fs::write(d.root_path(name), b"x").unwrap();
    }

    let mut c = d.client().await;
    let listed = c.list("/").await.expect("the listing arrives whole");
    let got: BTreeSet<String> = listed.iter().map(|e| e.name.clone()).collect();
    assert_eq!(listed.len(), names.len(), "a name was listed twice or lost");
    assert!(got == names, "the listing names other files");
    c.bye().await;

    let mut raw = d.raw().await;
    raw.send(Message::List(protocol::List::of("/"))).await;
    let mut frames = 0;
    let count = loop {
        match raw.recv().await.message {
            Message::Listing(_) => frames += 1,
            Message::ListEnd(end) => break end.count,
            other => panic!("expected listing frames, then list_end; got {other:?}"),
        }
    };
    assert_eq!(count, names.len() as u64);
    assert!(frames > 1, "{count} entries came in {frames} frame(s)");
    raw.bye().await;
}
