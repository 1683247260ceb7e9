//! What a `hello` must say, and what two hellos agree on: the protocol version, the chunk
//! limit and the transfer digest. Pure: the daemon and the client both call it.
//!
//! A client's hello names the range of versions it speaks (`min_version ..= version`); the
//! server answers with the highest version both speak, or refuses. So a later version can be
//! added to one side without cutting off peers that speak only the older one.

use std::fmt;

use crate::{DigestKind, Hello};

/// The highest protocol version this crate speaks; a client's hello names it as `version`.
pub const VERSION: u32 = 3;
/// The lowest protocol version this crate speaks; a client's hello names it as `min_version`.
pub const MIN_VERSION: u32 = 3;
/// The versions this crate speaks.
pub const SUPPORTED: Versions = Versions {
    min: MIN_VERSION,
    max: VERSION,
};
/// The smallest `max_chunk` a hello may announce: below it, a file would take a frame (and
/// its header, and a hash finalisation) for every few bytes.
pub const MIN_CHUNK: u32 = 4 * 1024;

/// A range of protocol versions, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub min: u32,
    pub max: u32,
}

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "version {}", self.max)
        } else {
            write!(f, "versions {} to {}", self.min, self.max)
        }
    }
}

/// Why a hello cannot be taken. Each side closes the connection after one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The client's `min_version` is above its `version`: a range with nothing in it.
    #[error("hello names min_version {min} above version {max}")]
    EmptyRange { min: u32, max: u32 },
    /// The two ranges do not meet (found by the server: `ours` are its versions).
    #[error("no protocol version in common: the server speaks {ours}, the client {theirs}")]
    NoCommonVersion { ours: Versions, theirs: Versions },
    /// The server answered with a version the client did not offer.
    #[error("the server chose protocol version {chosen}; this client speaks {asked}")]
    NotOffered { chosen: u32, asked: Versions },
    /// The peer would take chunks too small to be worth a frame each.
    #[error("hello announces max_chunk {0}, below the minimum of {MIN_CHUNK} bytes")]
    ChunkTooSmall(u32),
    /// The server answered with another transfer digest than the one asked for.
    #[error("the server uses the {} digest, this client asked for {}", .got.name(), .asked.name())]
    DigestRefused { asked: DigestKind, got: DigestKind },
}

/// What a hello exchange settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The protocol version of the session: the highest both speak.
    pub version: u32,
    /// The largest chunk body the peer accepts, at most [`crate::MAX_BODY`].
    pub max_chunk: u32,
    /// The transfer digest of the session.
    pub digest: DigestKind,
}

impl Hello {
    /// The versions a client's hello offers: `min_version` (or `version` alone) to `version`.
    pub fn versions(&self) -> Result<Versions, HelloError> {
        let (min, max) = (self.min_version.unwrap_or(self.version), self.version);
        if min > max {
            return Err(HelloError::EmptyRange { min, max });
        }
        Ok(Versions { min, max })
    }
}

/// The peer's `max_chunk`, refused below [`MIN_CHUNK`]; above [`crate::MAX_BODY`] it means
/// "any chunk", which is at most `MAX_BODY`.
fn chunk_limit(max_chunk: u32) -> Result<u32, HelloError> {
    if max_chunk < MIN_CHUNK {
        return Err(HelloError::ChunkTooSmall(max_chunk));
    }
    Ok(max_chunk.min(crate::MAX_BODY as u32))
}

/// The server's side: what it answers a client's hello with, speaking `ours`. The version is
/// the highest in both ranges; the digest is the client's (a digest the server does not know
/// never gets this far: the hello does not parse).
pub fn answer(client: &Hello, ours: Versions) -> Result<Agreed, HelloError> {
    let theirs = client.versions()?;
    let version = ours.max.min(theirs.max);
    if version < ours.min.max(theirs.min) {
        return Err(HelloError::NoCommonVersion { ours, theirs });
    }
    Ok(Agreed {
        version,
        max_chunk: chunk_limit(client.max_chunk)?,
        digest: client.digest,
    })
}

/// The client's side: whether the server's answer to `asked` can be taken. Its `version` must
/// be one the client offered, and its digest the one asked for. A `min_version` in it means
/// nothing and is ignored.
pub fn check_answer(asked: &Hello, server: &Hello) -> Result<Agreed, HelloError> {
    let offered = asked.versions()?;
    if !(offered.min..=offered.max).contains(&server.version) {
        return Err(HelloError::NotOffered {
            chosen: server.version,
            asked: offered,
        });
    }
    if server.digest != asked.digest {
        return Err(HelloError::DigestRefused {
            asked: asked.digest,
            got: server.digest,
        });
    }
    Ok(Agreed {
        version: server.version,
        max_chunk: chunk_limit(server.max_chunk)?,
        digest: server.digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(min_version: Option<u32>, version: u32, max_chunk: u32) -> Hello {
        Hello {
            version,
            min_version,
            agent: "t".into(),
            capabilities: vec![],
            max_chunk,
            digest: DigestKind::Md5,
        }
    }

    const V3: Versions = Versions { min: 3, max: 3 };
    const V3_4: Versions = Versions { min: 3, max: 4 };

    /// The server picks the highest version in both ranges, and refuses when they miss.
    #[test]
    fn the_server_answers_the_highest_common_version() {
        let cases: [(Option<u32>, u32, Versions, Option<u32>); 9] = [
            (None, 3, V3, Some(3)),
            (Some(3), 3, V3, Some(3)),
            (Some(2), 4, V3, Some(3)),
            (None, 4, V3, None),
            (None, 2, V3, None),
            (Some(1), 2, V3, None),
            (None, 3, V3_4, Some(3)),
            (Some(3), 5, V3_4, Some(4)),
            (Some(4), 4, V3, None),
        ];
        for (min, max, ours, want) in cases {
            let got = answer(&hello(min, max, MIN_CHUNK), ours);
            match (want, got) {
                (Some(v), Ok(agreed)) => assert_eq!(agreed.version, v, "{min:?}..={max} vs {ours}"),
                (None, Err(HelloError::NoCommonVersion { ours: o, theirs })) => {
                    assert_eq!(o, ours);
                    assert_eq!((theirs.min, theirs.max), (min.unwrap_or(max), max));
                }
                (want, got) => panic!("{min:?}..={max} vs {ours}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_range_with_nothing_in_it_is_refused() {
        assert_eq!(
            answer(&hello(Some(4), 3, MIN_CHUNK), V3),
            Err(HelloError::EmptyRange { min: 4, max: 3 })
        );
    }

    /// Below the floor is refused, not rounded up: the sender would cut chunks it was told
    /// not to. Above the cap means any chunk.
    #[test]
    fn max_chunk_has_a_floor_and_is_capped() {
        for (max_chunk, want) in [
            (0, Err(HelloError::ChunkTooSmall(0))),
            (1, Err(HelloError::ChunkTooSmall(1))),
            (MIN_CHUNK - 1, Err(HelloError::ChunkTooSmall(MIN_CHUNK - 1))),
            (MIN_CHUNK, Ok(MIN_CHUNK)),
            (1 << 20, Ok(1 << 20)),
            (u32::MAX, Ok(crate::MAX_BODY as u32)),
        ] {
            let got = answer(&hello(None, 3, max_chunk), V3).map(|a| a.max_chunk);
            assert_eq!(got, want, "client max_chunk {max_chunk}");
            let got = check_answer(&hello(None, 3, MIN_CHUNK), &hello(None, 3, max_chunk));
            assert_eq!(
                got.map(|a| a.max_chunk),
                want,
                "server max_chunk {max_chunk}"
            );
        }
    }

    /// The client takes any version it offered, and only those; and only the digest it asked.
    #[test]
    fn the_client_takes_only_a_version_and_digest_it_offered() {
        let asked = hello(Some(3), 4, MIN_CHUNK);
        for (chosen, ok) in [(2, false), (3, true), (4, true), (5, false)] {
            let got = check_answer(&asked, &hello(None, chosen, MIN_CHUNK));
            assert_eq!(got.is_ok(), ok, "server chose {chosen}: {got:?}");
        }
        let blake3 = Hello {
            digest: DigestKind::Blake3,
            ..hello(None, 3, MIN_CHUNK)
        };
        assert_eq!(
            check_answer(&asked, &blake3),
            Err(HelloError::DigestRefused {
                asked: DigestKind::Md5,
                got: DigestKind::Blake3
            })
        );
    }
}
