//! The frame codec: bytes on a stream to [`Frame`]s and back, with every length capped.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{ChunkHeader, Digest, Message};

/// One message and, for a chunk, its body.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub message: Message,
    /// The chunk's bytes; empty for every other message.
    pub body: Bytes,
}

impl Frame {
    /// A chunk frame for `data` at `offset`; `digest` is the running digest through its end
    /// (see [`crate::Hasher::seal`]).
    pub fn chunk(offset: u64, data: Bytes, digest: Digest) -> Self {
        let header = ChunkHeader {
            offset,
            len: u32::try_from(data.len()).expect("chunk bodies are capped far below 4 GiB"),
            digest,
        };
        Frame {
            message: Message::Chunk(header),
            body: data,
        }
    }
}

impl From<Message> for Frame {
    fn from(message: Message) -> Self {
        Frame {
            message,
            body: Bytes::new(),
        }
    }
}

// Bodies print as sizes: a megabyte of bytes in a log helps nobody.
impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("message", &self.message)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A header that was framed correctly but is not a message this version understands. The stream
/// is still in step (no body follows such a header), so the connection can carry on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The header's `type` field.
    pub kind: String,
    /// Why it was not understood (unknown type, missing field, ...).
    pub reason: String,
}

/// What the decoder yields: a frame, or a header the peer should be told it got wrong.
pub type Incoming = Result<Frame, Rejected>;

/// Errors after which the byte stream can no longer be trusted; the connection must close.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame header of {0} bytes exceeds the limit of {1} bytes")]
    HeaderTooLarge(u64, usize),
    #[error("frame header length is zero")]
    EmptyHeader,
    #[error("chunk body of {0} bytes exceeds the limit of {1} bytes")]
    BodyTooLarge(u64, usize),
    #[error("frame header is not a JSON message: {0}")]
    BadHeader(String),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("chunk header declares {declared} bytes but the body has {actual}")]
    BodyMismatch { declared: u64, actual: usize },
    #[error("cannot encode message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Length-prefixed JSON headers with optional binary bodies; see the crate docs for the layout.
#[derive(Debug)]
pub struct FrameCodec {
    max_header: usize,
    max_body: usize,
    state: DecodeState,
}

#[derive(Debug)]
enum DecodeState {
    Header,
    /// A chunk header was read; waiting for its body.
    Body(ChunkHeader),
}

/// Every `"type"` a header object names. JSON parsers keep one of duplicate keys, and which
/// one differs between them: a header that says `chunk` in one `type` and something else in
/// another must not pass as a harmless unknown message, or its body would be read as frames.
struct TypeKeys(Vec<Option<String>>);

impl TypeKeys {
    /// The type, if the header names exactly one, as a string.
    fn only(self) -> Option<String> {
        match <[_; 1]>::try_from(self.0) {
            Ok([kind]) => kind,
            Err(_) => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for TypeKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = TypeKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TypeKeys, A::Error> {
                let mut kinds = Vec::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "type" {
                        let v: serde_json::Value = map.next_value()?;
                        kinds.push(v.as_str().map(str::to_owned));
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(TypeKeys(kinds))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Whether JSON text escapes half of a UTF-16 surrogate pair on its own (`"\ud800"`): no
/// string can hold it, but a syntax-only check lets it through. Backslashes occur only inside
/// strings in valid JSON, so no string tracking is needed.
fn has_lone_surrogate(json: &[u8]) -> bool {
    let unit = |at: usize| -> Option<u16> {
        let hex = json.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'\\' {
            i += 1;
            continue;
        }
        if json.get(i + 1) != Some(&b'u') {
            i += 2; // any other escape, `\\` included
            continue;
        }
        match unit(i + 2) {
            Some(0xD800..=0xDBFF) => {
                let low = (json.get(i + 6..i + 8) == Some(&b"\\u"[..])).then(|| unit(i + 8));
                if !matches!(low, Some(Some(0xDC00..=0xDFFF))) {
                    return true;
                }
                i += 12;
            }
            Some(0xDC00..=0xDFFF) => return true,
            _ => i += 6,
        }
    }
    false
}

impl FrameCodec {
    /// A codec with the protocol's default caps.
    pub fn new() -> Self {
        Self::with_limits(crate::MAX_HEADER, crate::MAX_BODY)
    }

    pub fn with_limits(max_header: usize, max_body: usize) -> Self {
        FrameCodec {
            max_header,
            max_body,
            state: DecodeState::Header,
        }
    }

    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Changes the caps, from the next frame on: a server reads only small frames from a peer
    /// that has not logged in, and the protocol's once it has. Called between frames (a chunk
    /// whose body is still awaited keeps the cap its header was checked against).
    pub fn set_limits(&mut self, max_header: usize, max_body: usize) {
        self.max_header = max_header;
        self.max_body = max_body;
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for FrameCodec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        if let Some(frame) = self.decode_head(src)? {
            return Ok(Some(frame));
        }
        self.decode_body(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && matches!(self.state, DecodeState::Header) => Ok(None),
            None => Err(CodecError::Truncated),
        }
    }
}

impl FrameCodec {
    /// The length of the chunk body the codec waits for: its header was read, its body not
    /// yet. A reader that must account for memory takes this many bytes before reading on.
    pub fn pending_body(&self) -> Option<u32> {
        match &self.state {
            DecodeState::Body(h) => Some(h.len),
            DecodeState::Header => None,
        }
    }

    /// The header part of decoding: a whole non-chunk frame, or `None` (needing more bytes, or
    /// in the body state now).
    pub(crate) fn decode_head(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<Incoming>, CodecError> {
        if let DecodeState::Header = self.state {
            if src.len() < 4 {
                return Ok(None);
            }
            let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
            if len == 0 {
                return Err(CodecError::EmptyHeader);
            }
            if len > self.max_header {
                return Err(CodecError::HeaderTooLarge(len as u64, self.max_header));
            }
            if src.len() < 4 + len {
                src.reserve(4 + len - src.len());
                return Ok(None);
            }
            src.advance(4);
            let raw = src.split_to(len);
            match serde_json::from_slice::<Message>(&raw) {
                Ok(Message::Chunk(header)) => {
                    if header.len as usize > self.max_body {
                        return Err(CodecError::BodyTooLarge(header.len.into(), self.max_body));
                    }
                    self.state = DecodeState::Body(header);
                }
                Ok(message) => return Ok(Some(Ok(message.into()))),
                Err(e) => {
                    // Recoverable only if the header is well-formed JSON (valid UTF-8, valid
                    // escapes) with a string type; and never a chunk, whose body length we
                    // could not know.
                    // Checked for syntax only: building values would refuse numbers that are
                    // valid JSON but overflow a float (`1e400`), a mistyped field like any
                    // other.
                    let well_formed = std::str::from_utf8(&raw).is_ok()
                        && serde_json::from_slice::<serde::de::IgnoredAny>(&raw).is_ok()
                        && !has_lone_surrogate(&raw);
                    let kind = serde_json::from_slice::<TypeKeys>(&raw)
                        .ok()
                        .filter(|_| well_formed)
                        .and_then(TypeKeys::only);
                    return match kind {
                        Some(kind) if kind != "chunk" => Ok(Some(Err(Rejected {
                            kind,
                            reason: e.to_string(),
                        }))),
                        _ => Err(CodecError::BadHeader(e.to_string())),
                    };
                }
            }
        }
        Ok(None)
    }

    /// The body part of decoding: the chunk once its whole body is here.
    pub(crate) fn decode_body(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<Incoming>, CodecError> {
        let DecodeState::Body(header) = self.state else {
            return Ok(None);
        };
        let len = header.len as usize;
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        let body = src.split_to(len).freeze();
        self.state = DecodeState::Header;
        Ok(Some(Ok(Frame {
            message: Message::Chunk(header),
            body,
        })))
    }
}

impl FrameCodec {
    /// Encodes everything of `frame` but its body: the length prefix and the header, after
    /// the same checks as a whole frame.
    pub fn encode_head(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let header = serde_json::to_vec(&frame.message)?;
        if header.len() > self.max_header {
            return Err(CodecError::HeaderTooLarge(
                header.len() as u64,
                self.max_header,
            ));
        }
        let declared = match &frame.message {
            Message::Chunk(c) => c.len as u64,
            _ => 0,
        };
        if declared != frame.body.len() as u64 {
            return Err(CodecError::BodyMismatch {
                declared,
                actual: frame.body.len(),
            });
        }
        dst.reserve(4 + header.len() + frame.body.len());
        dst.put_u32(header.len() as u32);
        dst.extend_from_slice(&header);
        Ok(())
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_head(&frame, dst)?;
        dst.extend_from_slice(&frame.body);
        Ok(())
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(Frame::from(message), dst)
    }
}

#[cfg(test)]
mod tests;
